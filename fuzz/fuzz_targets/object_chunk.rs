//! What the object and executable transfers decode: `BinaryChunk`s and the
//! requests of `Node.FetchObject` / `Head.FetchBinary`, and the task specs
//! and object values that carry store locations.
#![no_main]

use fleet::proto::{BinaryChunk, FetchBinaryRequest, FetchObjectRequest, ObjectValue, TaskSpec};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn round_trip<T: Message + Default>(data: &[u8]) {
    if let Ok(m) = T::decode(data) {
        let again = m.encode_to_vec();
        let back = T::decode(again.as_slice()).expect("a re-encoded message decodes");
        assert_eq!(back.encode_to_vec(), again, "unstable round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<BinaryChunk>(data);
    round_trip::<FetchObjectRequest>(data);
    round_trip::<FetchBinaryRequest>(data);
    round_trip::<TaskSpec>(data);
    round_trip::<ObjectValue>(data);
});
