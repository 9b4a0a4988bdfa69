//! `compose.yaml` runs the whole system with the `lunchrush` binary: every
//! subcommand and flag it passes, and every `LUNCHRUSH_*` variable it sets,
//! must exist in this build (checked against `--help`, which lists both).
//! No Docker is needed: the file is read as text.

use std::collections::BTreeSet;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_lunchrush");
const COMPOSE: &str = include_str!("../compose.yaml");

fn help(subcommand: &str) -> String {
    let out = Command::new(BIN)
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "lunchrush {subcommand} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The `command: ["lunchrush", …]` lists of the file.
fn lunchrush_commands() -> Vec<Vec<String>> {
    COMPOSE
        .lines()
        .filter_map(|line| line.trim().strip_prefix("command: "))
        .filter(|rest| rest.starts_with('['))
        .map(|list| serde_json::from_str::<Vec<String>>(list).expect("a JSON-style list"))
        .filter(|argv| argv.first().map(String::as_str) == Some("lunchrush"))
        .collect()
}

#[test]
fn every_command_and_flag_in_compose_exists() {
    let commands = lunchrush_commands();
    let subcommands: BTreeSet<&str> = commands.iter().map(|argv| argv[1].as_str()).collect();
    for expected in ["migrate", "serve", "archive", "reconcile", "psp-sim"] {
        assert!(
            subcommands.contains(expected),
            "compose runs no `{expected}`"
        );
    }
    for argv in &commands {
        let text = help(&argv[1]);
        for flag in argv.iter().filter(|a| a.starts_with("--")) {
            assert!(
                text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")),
                "lunchrush {} has no {flag}:\n{text}",
                argv[1]
            );
        }
    }
}

#[test]
fn every_variable_in_compose_exists() {
    let helps: Vec<String> = ["serve", "archive", "reconcile", "migrate", "psp-sim"]
        .iter()
        .map(|s| help(s))
        .collect();
    let variables: BTreeSet<&str> = COMPOSE
        .lines()
        .filter_map(|line| line.trim().split_once(':').map(|(key, _)| key))
        .filter(|key| key.starts_with("LUNCHRUSH_"))
        .collect();
    assert!(variables.len() >= 5, "{variables:?}");
    for variable in variables {
        assert!(
            helps.iter().any(|h| h.contains(variable)),
            "no subcommand reads {variable}"
        );
    }
}
