//! The `kubetape` command line: one binary, one subcommand per component.

#[cfg(feature = "sim")]
mod demo;

use crate::args::{self, Args, Flag};
use crate::error::Result;

struct Command {
    name: &'static str,
    about: &'static str,
    flags: &'static [Flag],
    run: fn(&Args) -> Result<()>,
}

fn run_proxy(a: &Args) -> Result<()> {
    crate::proxy::run(crate::proxy::Config::from_args(a)?)
}

fn run_play(a: &Args) -> Result<()> {
    crate::playback::run(a)
}

fn run_ls(a: &Args) -> Result<()> {
    crate::playback::ls(a)
}

fn run_recorder(a: &Args) -> Result<()> {
    crate::recorder::run(crate::recorder::Config::from_args(a)?)
}

fn run_operator(a: &Args) -> Result<()> {
    crate::operator::run(crate::operator::Config::from_args(a)?)
}

#[cfg(feature = "sim")]
fn run_sim(a: &Args) -> Result<()> {
    crate::sim::run(crate::sim::Config::from_args(a)?)
}

const COMMANDS: &[Command] = &[
    Command { name: "proxy", about: "Serve kubectl users in front of a Kubernetes API server.", flags: crate::proxy::FLAGS, run: run_proxy },
    Command { name: "ls", about: "List the recordings in a recorder's storage directory.", flags: crate::playback::LS_FLAGS, run: run_ls },
    Command { name: "play", about: "Print a recording's output, or recover one stream's exact bytes.", flags: crate::playback::FLAGS, run: run_play },
    Command { name: "recorder", about: "Receive session recordings from proxies and keep them; serve them to readers.", flags: crate::recorder::FLAGS, run: run_recorder },
    Command { name: "operator", about: "Run recorders from Recorder resources (in a cluster).", flags: crate::operator::FLAGS, run: run_operator },
    #[cfg(feature = "sim")]
    Command { name: "sim", about: "Run a simulated Kubernetes API server on loopback (demo and test equipment).", flags: crate::sim::FLAGS, run: run_sim },
    #[cfg(feature = "sim")]
    Command { name: "demo", about: "Run a simulated cluster and the proxy on this machine, ready for kubectl.", flags: demo::FLAGS, run: demo::run },
];

fn top_usage() -> String {
    let mut s = format!("kubetape {}: records what people do in Kubernetes.\n\nUsage: kubetape <command> [flags]\n\nCommands:\n", env!("CARGO_PKG_VERSION"));
    for c in COMMANDS {
        s.push_str(&format!("  {:<8} {}\n", c.name, c.about));
    }
    s.push_str("\nRun `kubetape <command> --help` for a command's flags.\n");
    s
}

/// Runs the command line; returns the process exit code.
pub fn main(argv: Vec<String>) -> i32 {
    let Some(name) = argv.get(1) else {
        eprint!("{}", top_usage());
        return 2;
    };
    if matches!(name.as_str(), "--help" | "-h" | "help") {
        print!("{}", top_usage());
        return 0;
    }
    if name == "--version" {
        println!("kubetape {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let Some(cmd) = COMMANDS.iter().find(|c| c.name == name) else {
        eprintln!("kubetape: unknown command {name:?}\n\n{}", top_usage());
        return 2;
    };
    let rest = &argv[2..];
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", args::usage(cmd.name, cmd.about, cmd.flags));
        return 0;
    }
    let parsed = match Args::parse(rest, cmd.flags) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kubetape {}: {e}", cmd.name);
            return 2;
        }
    };
    match (cmd.run)(&parsed) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kubetape {}: {e}", cmd.name);
            2
        }
    }
}
