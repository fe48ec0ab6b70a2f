//! The whole-worker fuzz smoke run: the body of the `worker` fuzz target (`dataplane::fuzzing`) over its seed
//! scripts and a few thousand mutated and random ones. `scripts/fuzz-worker.sh` runs the same body under libFuzzer
//! for millions of scripts.

/// Scripts mutated from the seeds: bytes changed, inserted and cut, by a fixed pseudo-random sequence.
const MUTATED_SCRIPTS: u32 = 3000;

#[test]
fn the_seeds_make_the_workers_forward_and_every_frame_sent_checks() {
    let seeds = dataplane::fuzzing::seeds();
    if let Some(dir) = std::env::var_os("SLUICE_FUZZ_SEEDS") {
        for (index, seed) in seeds.iter().enumerate() {
            std::fs::write(
                std::path::Path::new(&dir).join(format!("seed-{index}")),
                seed,
            )
            .unwrap();
        }
    }
    let outcomes: Vec<_> = seeds
        .iter()
        .map(|seed| dataplane::fuzzing::exercise(seed))
        .collect();
    // Nearly every service's session gets through (a flow whose backend is still being resolved when the
    // script ends forwards nothing).
    let forwarding = outcomes
        .iter()
        .filter(|outcome| outcome.forwarded > 0)
        .count();
    assert!(forwarding >= seeds.len() - 3, "{outcomes:#?}");
    // The scripts over every service, untagged and on VLANs, forward as much.
    for all in &outcomes[outcomes.len() - 2..] {
        assert!(
            all.forwarded >= 32,
            "the script over every service: {all:?}"
        );
    }
    assert_eq!(
        outcomes[outcomes.len() - 2].forwarded,
        outcomes[outcomes.len() - 1].forwarded
    );
}

#[test]
fn mutated_scripts_never_make_a_worker_panic_or_send_a_bad_frame() {
    let seeds = dataplane::fuzzing::seeds();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut forwarded = 0;
    for round in 0..MUTATED_SCRIPTS {
        let mut script = if round % 10 == 9 {
            (0..next() % 512).map(|_| next() as u8).collect()
        } else {
            seeds[round as usize % seeds.len()].clone()
        };
        for _ in 0..1 + next() % 6 {
            if script.is_empty() {
                break;
            }
            let at = next() as usize % script.len();
            match next() % 4 {
                0 | 1 => script[at] = next() as u8,
                2 => script.insert(at, next() as u8),
                _ => script.truncate(at.max(1)),
            }
        }
        forwarded += dataplane::fuzzing::exercise(&script).forwarded;
    }
    // Most mutations keep the scripts meaningful: the workers must have forwarded, not only dropped.
    assert!(
        forwarded > u64::from(MUTATED_SCRIPTS),
        "only {forwarded} frames forwarded"
    );
}
