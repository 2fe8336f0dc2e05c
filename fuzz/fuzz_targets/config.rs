//! `Config::parse`: any text is a config or a list of errors, never a panic, and every
//! error points into the file it came from.
//!
//! The config "lives" in `fixtures/config/`, so relative paths in seeds (`users.htpasswd`,
//! `cookie-secret`, ...) reach the validation past the file checks. Those files are
//! read-only fixtures: nothing here writes to the disk.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sallyport::config::Config;

static CONFIG_PATH: LazyLock<PathBuf> =
    LazyLock::new(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/config/sallyport.toml"));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = CONFIG_PATH.as_path();
    match Config::parse(path, text) {
        Ok(config) => {
            assert!(
                !config.routes.is_empty(),
                "a config without routes was accepted"
            );
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "Err without any error");
            // `lines()` ignores a final newline; an error at the very end sits on the
            // line after it.
            let last_line = text.lines().count() + 1;
            for e in &errors.0 {
                assert_eq!(e.file, path);
                if let Some(line) = e.line {
                    assert!(
                        (1..=last_line).contains(&line),
                        "line {line} of {last_line}"
                    );
                }
                assert!(!e.message.is_empty(), "an error without a message: {e:?}");
                assert!(!e.key.contains('\n'), "{e:?}");
                assert!(e.to_string().starts_with(&path.display().to_string()));
            }
        }
    }
});
