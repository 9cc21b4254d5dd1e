//! Types generated from `proto/fleet.proto`.
#![allow(missing_docs, unreachable_pub, clippy::all)]

tonic::include_proto!("fleet.v1");
