//! Flags that would leave a server unable to serve are refused at start, naming the
//! flag, instead of being accepted and failing every request later.

mod support;

use std::time::Duration;

use support::{Demo, OutputExt};

#[test]
fn zero_limits_and_timeouts_are_refused_at_start() {
    let demo = Demo::start();
    let cmdline = std::fs::read_to_string(demo.path("proxy.cmdline")).expect("proxy.cmdline");
    let mut argv = cmdline.split_whitespace().map(String::from);
    let bin = argv.next().expect("the binary");
    let args: Vec<String> = argv.collect();
    for (flag, why) in [("--recorder-timeout", "--recorder-timeout: expected at least 1 second, found 0"), ("--max-connections", "--max-connections: expected at least 1, found 0")]
    {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(&args).args([flag, "0"]).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let out = support::wait_with_timeout(cmd.spawn().expect("kubetape"), Duration::from_secs(10));
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(why), "{flag} 0: {}", out.describe());
    }
}
