//! The payload request-response stream: `network::PayloadCodec::read_request` and
//! `read_response` over arbitrary bytes, with a small payload limit.
//!
//! The first byte picks the side (even: a response, read by the requester; odd: a request, read
//! by the server) and, in its upper seven bits, the payload limit in steps of 64 bytes (0 to 8128); the rest is the stream.
//! Checks: nothing panics; a response is never larger than the limit and is exactly the bytes of
//! its frame; whatever was read writes back to bytes that read to the same value.

#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use libp2p::request_response::Codec;
use medmesh_node::network::{PAYLOAD_PROTOCOL, PayloadCodec, Response};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let limit = usize::from(mode >> 1) * 64;
    let mut codec = PayloadCodec::new(limit);
    let mut io = Cursor::new(stream);
    if mode % 2 == 0 {
        let Ok(response) = block_on(codec.read_response(&PAYLOAD_PROTOCOL, &mut io)) else {
            return;
        };
        let consumed = usize::try_from(io.position()).expect("within the input");
        if let Response::Payload(bytes) = &response {
            assert!(
                bytes.len() <= limit,
                "{} bytes over a limit of {limit}",
                bytes.len()
            );
            assert_eq!(&bytes[..], &stream[consumed - bytes.len()..consumed]);
        }
        let mut written = Cursor::new(Vec::new());
        block_on(codec.write_response(&PAYLOAD_PROTOCOL, &mut written, response.clone()))
            .expect("a response that was read can be written");
        let written = written.into_inner();
        assert_eq!(
            written,
            stream[..consumed],
            "a response reads from other bytes than it writes"
        );
        let back = block_on(codec.read_response(&PAYLOAD_PROTOCOL, &mut Cursor::new(&written)))
            .expect("a written response reads");
        assert_eq!(back, response);
    } else {
        let Ok(id) = block_on(codec.read_request(&PAYLOAD_PROTOCOL, &mut io)) else {
            return;
        };
        let mut written = Cursor::new(Vec::new());
        block_on(codec.write_request(&PAYLOAD_PROTOCOL, &mut written, id))
            .expect("a request that was read can be written");
        let back =
            block_on(codec.read_request(&PAYLOAD_PROTOCOL, &mut Cursor::new(written.into_inner())))
                .expect("a written request reads");
        assert_eq!(back, id);
    }
});
