//! Command-line flags with defaults, help text and an optional JSON config file
//! (`--config FILE`, keys named like the flags); flags given on the command line win.
//! A flag whose default is `false` is a switch: given alone (`--seed`) it means
//! `true`. Every other flag needs a value, so `--file` alone is an error, never the
//! value `"true"`. Every problem is an error that names the flag or file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Context, Error, Result};

/// The default that makes a flag a switch.
const SWITCH_OFF: &str = "false";

#[derive(Clone, Copy)]
pub struct Flag {
    pub name: &'static str,
    /// `None`: no default (optional or required, as the subcommand decides).
    /// `Some("false")`: a switch, `true` when given without a value.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

pub struct Args {
    values: BTreeMap<String, String>,
}

/// `--help` text for a subcommand.
pub fn usage(command: &str, about: &str, flags: &[Flag]) -> String {
    let mut out = format!("{about}\n\nUsage: kubetape {command} [--config FILE] [FLAGS]\n\nFlags:\n");
    for f in flags {
        let default = f.default.map(|d| format!(" [default: {d}]")).unwrap_or_default();
        out.push_str(&format!("  --{:<22} {}{}\n", f.name, f.help, default));
    }
    out.push_str("  --config FILE          JSON object of flag values; command-line flags win\n");
    out
}

impl Args {
    /// Parses `--name value` and `--name=value` pairs; a switch with no value (`--x`
    /// followed by another flag or nothing) means `true`.
    pub fn parse(argv: &[String], flags: &[Flag]) -> Result<Args> {
        let known = |n: &str| flags.iter().any(|f| f.name == n);
        let switch = |n: &str| flags.iter().any(|f| f.name == n && f.default == Some(SWITCH_OFF));
        let mut cli = BTreeMap::new();
        let mut it = argv.iter().peekable();
        while let Some(arg) = it.next() {
            let Some(name) = arg.strip_prefix("--") else {
                crate::bail!("unexpected argument {arg:?}; flags start with --");
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let value = match it.peek() {
                        Some(next) if !next.starts_with("--") => it.next().cloned().unwrap_or_default(),
                        _ if switch(name) => "true".to_string(),
                        // An unknown flag is reported as unknown, below.
                        _ if known(name) || name == "config" => crate::bail!("--{name}: needs a value (--{name} VALUE or --{name}=VALUE)"),
                        _ => String::new(),
                    };
                    (name.to_string(), value)
                }
            };
            if name != "config" && !known(&name) {
                crate::bail!("--{name}: unknown flag (see --help)");
            }
            cli.insert(name, value);
        }
        let mut values = BTreeMap::new();
        for f in flags {
            if let Some(d) = f.default {
                values.insert(f.name.to_string(), d.to_string());
            }
        }
        if let Some(path) = cli.remove("config") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("--config {path}"))?;
            let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).with_context(|| format!("--config {path}: expected a JSON object"))?;
            for (k, v) in doc {
                if !known(&k) {
                    crate::bail!("--config {path}: unknown key {k:?}");
                }
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                values.insert(k, v);
            }
        }
        values.extend(cli);
        Ok(Args { values })
    }

    pub fn opt(&self, name: &str) -> Option<String> {
        self.values.get(name).filter(|v| !v.is_empty()).cloned()
    }

    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.opt(name).map(PathBuf::from)
    }

    pub fn required(&self, name: &str) -> Result<String> {
        self.opt(name).ok_or_else(|| Error::new(format!("--{name}: required")))
    }

    pub fn required_path(&self, name: &str) -> Result<PathBuf> {
        self.required(name).map(PathBuf::from)
    }

    pub fn bool(&self, name: &str) -> Result<bool> {
        match self.opt(name).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => crate::bail!("--{name}: expected true or false, found {v:?}"),
        }
    }

    pub fn parsed<T: FromStr>(&self, name: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.required(name)?;
        v.parse().map_err(|e| Error::new(format!("--{name}: {e}: {v:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[
        Flag { name: "listen", default: Some("127.0.0.1:1"), help: "" },
        Flag { name: "mode", default: None, help: "" },
        Flag { name: "verbose", default: Some("false"), help: "" },
    ];

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_config_and_cli_layer() {
        let dir = std::env::temp_dir().join(format!("kubetape-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("c.json");
        std::fs::write(&cfg, r#"{"listen": "0.0.0.0:2", "mode": "noauth"}"#).unwrap();
        let a = Args::parse(&argv(&["--config", cfg.to_str().unwrap(), "--mode=auth", "--verbose"]), FLAGS).unwrap();
        assert_eq!(a.opt("listen").as_deref(), Some("0.0.0.0:2"));
        assert_eq!(a.opt("mode").as_deref(), Some("auth"));
        assert!(a.bool("verbose").unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn errors_name_the_flag() {
        let e = Args::parse(&argv(&["--lisen", "x"]), FLAGS).err().unwrap().to_string();
        assert_eq!(e, "--lisen: unknown flag (see --help)");
        let a = Args::parse(&argv(&[]), FLAGS).unwrap();
        assert_eq!(a.required("mode").unwrap_err().to_string(), "--mode: required");
        assert!(a.parsed::<u16>("listen").unwrap_err().to_string().starts_with("--listen:"));
    }

    #[test]
    fn only_switches_go_without_a_value() {
        assert!(!Args::parse(&argv(&[]), FLAGS).unwrap().bool("verbose").unwrap());
        assert!(Args::parse(&argv(&["--verbose", "--mode", "x"]), FLAGS).unwrap().bool("verbose").unwrap());
        for (bare, flag) in [(&["--mode"][..], "mode"), (&["--mode", "--verbose"], "mode"), (&["--listen", "--mode=x"], "listen"), (&["--config"], "config")] {
            let e = Args::parse(&argv(bare), FLAGS).err().unwrap().to_string();
            assert_eq!(e, format!("--{flag}: needs a value (--{flag} VALUE or --{flag}=VALUE)"), "{bare:?}");
        }
        assert_eq!(Args::parse(&argv(&["--lisen"]), FLAGS).err().unwrap().to_string(), "--lisen: unknown flag (see --help)");
    }
}
