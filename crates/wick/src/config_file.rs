//! `--config FILE`: every `wick serve` flag may also be set in a TOML file, one key per
//! flag (`max-num-seqs = 64` or `max_num_seqs = 64`; lists for repeatable flags; `true`
//! for switches). The file's settings are placed before the command line's, so a flag
//! given on the command line wins.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;

/// Expands `--config FILE` (or `--config=FILE`) in `args` into the flags it holds.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let mut out = Vec::with_capacity(args.len());
    let mut file = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let s = arg.to_string_lossy();
        if s == "--config" {
            file = Some(it.next().context("--config needs a file")?);
        } else if let Some(path) = s.strip_prefix("--config=") {
            file = Some(OsString::from(path));
        } else {
            out.push(arg);
        }
    }
    let Some(file) = file else {
        return Ok(out);
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("--config {}", file.to_string_lossy()))?;
    let flags =
        flags_from_toml(&text).with_context(|| format!("--config {}", file.to_string_lossy()))?;
    // After the subcommand name: `wick serve <file flags> <command-line flags>`.
    let at = out.len().min(2);
    out.splice(at..at, flags);
    Ok(out)
}

fn flags_from_toml(text: &str) -> Result<Vec<OsString>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    let mut flags = vec![];
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        let mut push = |v: &toml::Value| -> Result<()> {
            match v {
                toml::Value::String(s) => flags.extend([flag.clone().into(), s.into()]),
                toml::Value::Integer(i) => {
                    flags.extend([flag.clone().into(), i.to_string().into()])
                }
                toml::Value::Float(f) => flags.extend([flag.clone().into(), f.to_string().into()]),
                toml::Value::Boolean(true) => flags.push(flag.clone().into()),
                toml::Value::Boolean(false) => {}
                other => bail!("{key}: unsupported value {other}"),
            }
            Ok(())
        };
        match &value {
            toml::Value::Array(items) => {
                for v in items {
                    push(v)?;
                }
            }
            v => push(v)?,
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_flags_go_before_command_line_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wick.toml");
        std::fs::write(
            &path,
            "model = \"m.gguf\"\nmax_num_seqs = 8\napi-key = [\"a\", \"b\"]\nno_prefix_caching = true\nport = 9000\n",
        )
        .unwrap();
        let args: Vec<OsString> = ["wick", "serve", "--port", "1234", "--config"]
            .iter()
            .map(OsString::from)
            .chain([path.clone().into_os_string()])
            .collect();
        let out: Vec<String> = expand(args)
            .unwrap()
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(&out[..2], ["wick", "serve"]);
        assert_eq!(&out[out.len() - 2..], ["--port", "1234"]);
        let joined = out.join(" ");
        for part in [
            "--model m.gguf",
            "--max-num-seqs 8",
            "--api-key a --api-key b",
            "--no-prefix-caching",
            "--port 9000",
        ] {
            assert!(joined.contains(part), "{joined}");
        }
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(flags_from_toml("model = ").is_err());
        assert!(flags_from_toml("x = { a = 1 }").is_err());
        assert!(expand(vec!["wick".into(), "serve".into(), "--config".into()]).is_err());
    }
}
