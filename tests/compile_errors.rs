//! Compile errors of `#[fleet::remote]` misuse: each case in
//! `tests/compile_fail/` must fail with the message in its `.stderr` file,
//! one error that names the fix. `TRYBUILD=overwrite` regenerates them after
//! a deliberate change of wording.

#[test]
fn misuse_of_remote_gives_one_error_that_names_the_fix() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile_fail/*.rs");
}
