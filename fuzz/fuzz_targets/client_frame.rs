//! What the head decodes from every session: `ClientFrame`s (and what
//! clients decode from the head: `HeadFrame`s). Anything that decodes must
//! re-encode to bytes that decode to the same encoding.
#![no_main]

use fleet::proto::{ClientFrame, HeadFrame};
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
    round_trip::<ClientFrame>(data);
    round_trip::<HeadFrame>(data);
});
