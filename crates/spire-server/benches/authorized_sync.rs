//! How long answering one agent's sync takes from the authorized-entry index, for 1k, 10k and
//! 100k authorized entries. Run with `cargo bench -p spire-server --bench authorized_sync`;
//! prints a markdown table (median of several lookups per row).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use spire_core::selector::Selector;
use spire_server::authorized::EntryIndex;
use spire_server::datastore::{AttestedNode, RegistrationEntry};

const TD: &str = "spiffe://example.org";
const SERVER: &str = "spiffe://example.org/spire/server";
const AGENT: &str = "spiffe://example.org/spire/agent/x509pop/bench";
/// Entries that belong to other agents, present in every index so lookups are not measured
/// on an index that holds only the answer.
const UNRELATED: usize = 20_000;
const RUNS: usize = 9;

fn sel(kind: &str, value: &str) -> Selector {
    Selector {
        kind: kind.to_owned(),
        value: value.to_owned(),
    }
}

fn entry(n: usize, parent_id: String, spiffe_id: String) -> RegistrationEntry {
    RegistrationEntry {
        entry_id: format!("{n:08x}-0000-4000-8000-000000000000"),
        parent_id,
        spiffe_id,
        selectors: vec![sel("k8s", "ns:default"), sel("k8s", &format!("sa:svc-{n}"))],
        x509_svid_ttl: 3600,
        dns_names: vec![format!("svc-{n}.default.svc")],
        revision_number: 1,
        created_at: 1_700_000_000,
        ..RegistrationEntry::default()
    }
}

fn agent(spiffe_id: &str, selectors: Vec<Selector>) -> AttestedNode {
    AttestedNode {
        spiffe_id: spiffe_id.to_owned(),
        attestation_data_type: "x509pop".to_owned(),
        cert_serial_number: "1".to_owned(),
        cert_not_after: 4_000_000_000,
        selectors,
        ..AttestedNode::default()
    }
}

/// `count` entries parented directly by the agent.
fn direct(count: usize) -> Vec<RegistrationEntry> {
    (0..count)
        .map(|n| entry(n, AGENT.to_owned(), format!("{TD}/direct/{n}")))
        .collect()
}

/// `count` entries reached through 10 node aliases the agent matches: below each alias sit
/// workload-parent entries, each parenting further workloads (three levels deep).
fn via_aliases(count: usize) -> Vec<RegistrationEntry> {
    const ALIASES: usize = 10;
    let mut entries = Vec::with_capacity(count + ALIASES);
    for a in 0..ALIASES {
        let mut alias = entry(10_000_000 + a, SERVER.to_owned(), format!("{TD}/alias/{a}"));
        alias.selectors = vec![
            sel("x509pop", "ca:bench"),
            sel("x509pop", &format!("group:{}", a % 2)),
        ];
        entries.push(alias);
    }
    let mut n = 0;
    while n < count {
        let a = n % ALIASES;
        let mid = n;
        entries.push(entry(
            n,
            format!("{TD}/alias/{a}"),
            format!("{TD}/mid/{mid}"),
        ));
        n += 1;
        for _ in 0..9 {
            if n >= count {
                break;
            }
            entries.push(entry(
                n,
                format!("{TD}/mid/{mid}"),
                format!("{TD}/leaf/{n}"),
            ));
            n += 1;
        }
    }
    entries
}

fn unrelated() -> Vec<RegistrationEntry> {
    (0..UNRELATED)
        .map(|n| {
            entry(
                20_000_000 + n,
                format!("{TD}/spire/agent/x509pop/other-{}", n % 100),
                format!("{TD}/other/{n}"),
            )
        })
        .collect()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn main() {
    println!(
        "| authorized entries | shape | index build (ms) | sync median (ms) | min (ms) | max (ms) |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    let agent_selectors = vec![
        sel("x509pop", "ca:bench"),
        sel("x509pop", "group:0"),
        sel("x509pop", "group:1"),
    ];
    for count in [1_000, 10_000, 100_000] {
        for (shape, entries) in [
            ("direct children", direct(count)),
            ("10 aliases, 2 levels", via_aliases(count)),
        ] {
            let mut records = entries;
            records.extend(unrelated());
            let agents = (0..100)
                .map(|i| {
                    agent(
                        &format!("{TD}/spire/agent/x509pop/other-{i}"),
                        vec![sel("x509pop", "ca:other")],
                    )
                })
                .chain([agent(AGENT, agent_selectors.clone())]);

            let started = Instant::now();
            let index = EntryIndex::from_records(records, agents);
            let build = started.elapsed();

            let mut times = Vec::with_capacity(RUNS);
            let mut found = 0;
            for _ in 0..RUNS {
                let started = Instant::now();
                let answer = black_box(index.authorized_entries(black_box(AGENT)));
                times.push(started.elapsed());
                found = answer.len();
            }
            assert_eq!(
                found, count,
                "the index answered the wrong number of entries"
            );
            times.sort();
            println!(
                "| {count} | {shape} | {:.1} | {:.2} | {:.2} | {:.2} |",
                ms(build),
                ms(times[RUNS / 2]),
                ms(times[0]),
                ms(times[RUNS - 1]),
            );
        }
    }
}
