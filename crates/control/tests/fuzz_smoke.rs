//! The fuzz smoke runs: the bodies of the three fuzz targets (`control::fuzzing`) over the repository's own
//! inputs and thousands of random and mutated ones. `scripts/fuzz-control.sh` runs the same bodies under libFuzzer.

use proptest::prelude::*;

fn examples() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut files: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| std::fs::read(path).unwrap())
        .collect();
    files.sort();
    files
}

const KEEPALIVED: &str = "global_defs {\n router_id x\n}\nvirtual_server 192.0.2.10 80 {\n delay_loop 6\n lb_algo wrr\n \
    lb_kind DR\n persistence_timeout 50\n persistence_granularity 255.255.255.0\n protocol TCP\n \
    real_server 192.0.2.21 80 {\n  weight 3\n  inhibit_on_failure\n  TCP_CHECK {\n   connect_timeout 3\n   retry 3\n  }\n }\n \
    real_server 192.0.2.22 80 {\n  HTTP_GET {\n   url {\n    path \"/healthz\"\n    status_code 204\n   }\n  }\n }\n}\n\
    virtual_server fd00::1 53 {\n lb_kind FNAT\n protocol UDP\n real_server fd00::5 5353\n}\n";

/// Flips, inserts and deletes bytes of `seed` as `edits` say.
fn mutate(seed: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for &(at, kind, byte) in edits {
        let at = if data.is_empty() { 0 } else { at % data.len() };
        match kind % 3 {
            0 if !data.is_empty() => data[at] = byte,
            1 => data.insert(at, byte),
            _ if !data.is_empty() => {
                data.remove(at);
            }
            _ => data.push(byte),
        }
    }
    data
}

#[test]
fn the_seeds_are_accepted() {
    for example in examples() {
        assert!(control::fuzzing::config(&example));
    }
    assert!(control::fuzzing::keepalived(KEEPALIVED.as_bytes()));
    assert!(control::fuzzing::ctl(
        b"set-weight 10.0.0.100:80 tcp 10.1.0.13:80 5"
    ));
    assert!(control::fuzzing::ctl(b"GET /metrics HTTP/1.1\r\n\r\n"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configurations(seed in 0usize..16, edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let examples = examples();
        control::fuzzing::config(&mutate(&examples[seed % examples.len()], &edits));
    }

    #[test]
    fn mutated_keepalived_files(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), prop_oneof![Just(b'{'), Just(b'}'), Just(b'"'), Just(b'\\'), Just(b'\n'), Just(b' '), Just(b'#'), any::<u8>()]), 1..8)) {
        control::fuzzing::keepalived(&mutate(KEEPALIVED.as_bytes(), &edits));
    }

    #[test]
    fn random_ctl_lines_and_http_heads(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        control::fuzzing::ctl(&data);
    }

    #[test]
    fn mutated_ctl_lines_and_http_heads(seed in prop_oneof![
        Just(&b"add-backend [fd00::1]:80 tcp [fd00::2]:8080 3"[..]),
        Just(&b"trace 198.51.100.1:10000 10.0.0.100:80 udp"[..]),
        Just(&b"HEAD /metrics?x HTTP/1.0\r\nA: b\r\n\r\n"[..]),
    ], edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        control::fuzzing::ctl(&mutate(seed, &edits));
    }
}
