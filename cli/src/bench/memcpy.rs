//! This machine's memcpy bandwidth, the ceiling for "put gigabytes".

use super::timeit::Timer;

/// Bytes copied per call: Ray's 800 MB array (`100 * 1024 * 1024` int64s).
const BYTES: usize = 100 * 1024 * 1024 * 8;

/// Test name; "gigabytes" in it makes `TESTS_TO_RUN=gigabytes` select it
/// with the two put tests it is the yardstick for.
pub(super) const NAME: &str = "local memcpy gigabytes";

/// Measures copying an 800 MB buffer into another, both already touched,
/// counted in Ray's units (0.8 "gigabytes" per copy, as for a put).
pub(super) fn run(t: &mut Timer) -> anyhow::Result<()> {
    if !t.wants(NAME) {
        return Ok(());
    }
    let src: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
    let mut dst = vec![1u8; BYTES];
    t.timeit(NAME, 8.0 * 0.1, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        Ok(())
    })
}
