//! docs/configuration.md cannot drift from the config schema: every table it documents
//! must list exactly the keys the parser accepts (asked of the parser itself, which
//! names every accepted key when it meets an unknown one), every table the parser has
//! must be documented, and every example must parse with the right type.

use std::collections::BTreeMap;
use std::path::Path;

use sallyport::config::Config;

const DOC: &str = include_str!("../docs/configuration.md");
const PROBE: &str = "__probe__";

/// Section header (`""` for the top level, `[server.tls]`, `[[route]]`) -> rows of
/// (key, example cell).
fn documented() -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in DOC.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            current = if heading == "Top level" {
                Some(String::new())
            } else {
                heading
                    .strip_prefix('`')
                    .and_then(|h| h.strip_suffix('`'))
                    .map(str::to_string)
            };
            if let Some(section) = &current {
                sections.insert(section.clone(), Vec::new());
            }
            continue;
        }
        let (Some(section), Some(row)) = (&current, line.strip_prefix("| `")) else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        let key = cells[0].split('`').next().unwrap().to_string();
        let example = cells
            .last()
            .unwrap()
            .trim_end_matches(" |")
            .trim()
            .to_string();
        sections.get_mut(section).unwrap().push((key, example));
    }
    sections
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("/nonexistent/sallyport.toml"), text).map_err(|e| e.to_string())
}

/// The keys the parser accepts in `section`, from its unknown-key error.
fn accepted_keys(section: &str) -> Vec<String> {
    let text = format!("{section}\n{PROBE} = 1\n");
    let error = parse(&text).expect_err("a probe key is always unknown");
    // serde writes "expected `a`", "expected `a` or `b`" or "expected one of `a`, `b`, `c`".
    let list = error
        .split("expected ")
        .nth(1)
        .unwrap_or_else(|| panic!("{section}: no key list in {error:?}"));
    let list = list.lines().next().unwrap();
    list.strip_prefix("one of ")
        .unwrap_or(list)
        .split(", ")
        .flat_map(|k| k.split(" or "))
        .map(|k| k.trim_matches('`').to_string())
        .collect()
}

#[test]
fn every_documented_table_lists_exactly_the_keys_the_parser_accepts() {
    let documented = documented();
    assert!(
        documented.len() > 10,
        "sections found: {:?}",
        documented.keys()
    );
    for (section, rows) in &documented {
        let mut doc_keys: Vec<String> = rows.iter().map(|(k, _)| k.clone()).collect();
        let mut real_keys = accepted_keys(section);
        doc_keys.sort();
        real_keys.sort();
        assert_eq!(
            doc_keys, real_keys,
            "docs/configuration.md section {section:?} is out of date"
        );
    }
}

#[test]
fn every_table_the_parser_has_is_documented() {
    let documented = documented();
    // Walk down from the top level: every key documented with type `table` must have
    // a section of its own.
    for (section, rows) in &documented {
        for (key, example) in rows {
            if example != "see below" {
                continue;
            }
            let child = match section.as_str() {
                "" if key == "route" => "[[route]]".to_string(),
                "" => format!("[{key}]"),
                parent => format!("[{}.{key}]", parent.trim_matches(['[', ']'])),
            };
            assert!(
                documented.contains_key(&child),
                "{child} is a table in {section:?} but has no section in docs/configuration.md"
            );
        }
    }
}

#[test]
fn every_example_parses_with_the_right_type() {
    for (section, rows) in documented() {
        for (key, example) in rows {
            if example == "see below" {
                continue;
            }
            let line = example
                .strip_prefix('`')
                .and_then(|e| e.strip_suffix('`'))
                .unwrap_or_else(|| panic!("{section} {key}: example is not in backticks"));
            let assigned = line.split(" = ").next().unwrap().trim();
            assert_eq!(
                assigned, key,
                "{section}: the example for {key} sets {assigned}"
            );
            let text = format!("{section}\n{line}\n");
            assert!(
                toml::from_str::<toml::Table>(&text).is_ok(),
                "{section} {key}: example is not TOML: {line}"
            );
            // Validation may still fail (files do not exist here, other keys are
            // missing); the parser's shape errors may not.
            if let Err(errors) = parse(&text) {
                for shape_error in ["unknown field", "invalid type", "unknown variant"] {
                    assert!(
                        !errors.contains(shape_error),
                        "{section} {key}: {line} -> {errors}"
                    );
                }
            }
        }
    }
}
