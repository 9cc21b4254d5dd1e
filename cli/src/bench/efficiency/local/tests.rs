//! Unit tests of part one's summary.

use super::median;

#[test]
fn the_median_is_the_middle_run() {
    assert_eq!(median(vec![1.58, 1.33, 1.44]), 1.44);
    assert_eq!(median(vec![1.2]), 1.2);
    // An even count takes the upper of the two middle runs.
    assert_eq!(median(vec![1.0, 4.0, 2.0, 3.0]), 3.0);
    assert!(median(Vec::new()).is_nan());
}
