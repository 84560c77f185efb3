//! Every rules file in the repository loads, so examples cannot rot.

use std::path::{Path, PathBuf};

use portcloak::Config;

use crate::util::root;

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read rules dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_rules_file_loads() {
    let mut files = Vec::new();
    toml_files(&root().join("rules"), &mut files);
    assert!(files.len() >= 3, "default plus at least two examples: {files:?}");
    for file in &files {
        if let Err(e) = Config::load(file) {
            panic!("{}: {e}", file.display());
        }
    }
}

#[test]
fn default_rules_are_the_built_in_defaults() {
    let loaded = Config::load(&root().join("rules/default.toml")).expect("default.toml loads");
    assert_eq!(loaded, Config::default());
}

/// Every key of every section appears in default.toml, with a comment
/// right above it.
#[test]
fn default_rules_document_every_key() {
    let text = std::fs::read_to_string(root().join("rules/default.toml")).expect("read");
    let file: toml::Table = toml::from_str(&text).expect("parse");
    let defaults = toml::Table::try_from(Config::default()).expect("serialise defaults");
    let keys = |t: &toml::Table| -> Vec<String> {
        let mut v: Vec<String> = t
            .iter()
            // Arrays of tables (`[[hidden]]`) have no defaults to list; they
            // are documented as commented examples.
            .filter_map(|(section, body)| Some((section, body.as_table()?)))
            .flat_map(|(section, body)| body.keys().map(move |k| format!("{section}.{k}")))
            .collect();
        v.sort();
        v
    };
    assert_eq!(keys(&file), keys(&defaults));
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        assert!(
            i > 0 && lines[i - 1].trim_start().starts_with('#'),
            "no comment right above `{line}`"
        );
    }
}
