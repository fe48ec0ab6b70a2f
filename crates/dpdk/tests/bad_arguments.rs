//! Bad EAL arguments are a clear error, not an abort, and the EAL refuses a second start.

mod common;

use dpdk::{Eal, EalError};

#[test]
fn bad_arguments_are_reported() {
    let error = Eal::init(&common::eal_args(&["--definitely-not-an-eal-option"])).unwrap_err();
    match &error {
        EalError::InitFailed { args, .. } => {
            assert!(args.contains("--definitely-not-an-eal-option"))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(error.to_string().contains("[eal] arguments"));
    assert_eq!(
        Eal::init(&common::eal_args(&[])).unwrap_err(),
        EalError::AlreadyInitialised
    );
}
