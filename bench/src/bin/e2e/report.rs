//! The report's table: one row per step, and why a step was not sustained.

use std::fmt::Write as _;

use super::{P99_MAX_MS, Step, Watched};

/// The steps as a markdown table, with the CPU of each watched process.
pub fn table(steps: &[Step], watched: &[Watched]) -> String {
    let mut md = String::new();
    let _ = write!(
        md,
        "| offered/s | orders | placed/s | settled+archived/s | drained after | placement p50 / p99 ms | placed → captured p50 / p99 ms | longest AOF stall ms | Redis cmds/order |"
    );
    for w in watched {
        let _ = write!(md, " {} µs/order |", w.name);
    }
    let _ = writeln!(md, " sustained |");
    let _ = write!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for _ in watched {
        let _ = write!(md, " --- |");
    }
    let _ = writeln!(md, " --- |");
    for s in steps {
        let _ = write!(
            md,
            "| {:.0} | {} | {:.0} | {:.0} | {:.1} s | {:.1} / {:.1} | {:.1} / {:.1} | {} | {:.1} |",
            s.offered,
            s.placed,
            s.placed_per_s,
            s.settled_per_s,
            s.drained_after_s,
            s.place_p50_ms,
            s.place_p99_ms,
            s.captured_p50_ms,
            s.captured_p99_ms,
            s.aof_stall_ms,
            s.commands_per_order
        );
        for (_, us) in &s.cpu_us {
            let _ = write!(md, " {us:.0} |");
        }
        let why = if s.sustained {
            "yes".to_string()
        } else if s.refused > 0 {
            format!("no: {} refused", s.refused)
        } else if s.behind_schedule {
            "no: the load fell behind".into()
        } else if s.ran_again {
            format!(
                "no: p99 ≥ 20 ms behind a {} ms AOF stall; ran again",
                s.aof_stall_ms
            )
        } else if s.place_p99_ms >= P99_MAX_MS {
            "no: p99 ≥ 20 ms".into()
        } else {
            "no: backlog".into()
        };
        let _ = writeln!(md, " {why} |");
    }
    md
}
