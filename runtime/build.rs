//! Compiles `proto/fleet.proto` with a vendored protoc, so a fresh machine
//! needs nothing beyond cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=../proto/fleet.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        // Only an actor's creation has one: boxed, a task record is 56
        // bytes smaller (the head keeps one per queued task, and a driver
        // one per submit not yet sent).
        .boxed(".fleet.v1.TaskSpec.create")
        // A value's location and an error are boxed, so a `Payload` is as
        // small as its common case, inline bytes (40 bytes instead of 104):
        // the head keeps one per object and a driver one per ref.
        .boxed(".fleet.v1.ObjectValue.payload.stored")
        .boxed(".fleet.v1.ObjectValue.payload.error")
        // Rare and large (344 and 208 bytes): boxed, every other op (a
        // submit, a subscribe, a release) is 208 bytes instead of 344 in
        // the channels and frames it passes through.
        .boxed(".fleet.v1.ClientOp.op.hello")
        .boxed(".fleet.v1.ClientOp.op.job_update")
        // Only the head's copy for a worker has store locations: boxed, an
        // argument is 40 bytes instead of 64 (a queued task keeps its
        // arguments).
        .boxed(".fleet.v1.Arg.kind.stored")
        // The spec too: then an op is 112 bytes, not 208 (frames hold
        // thousands, moved several times on their way through the head),
        // and a head op 88, not 200.
        .boxed(".fleet.v1.ClientOp.op.submit")
        .boxed(".fleet.v1.HeadOp.op.execute")
        .boxed(".fleet.v1.HeadOp.op.welcome")
        .boxed(".fleet.v1.HeadOp.op.run_job")
        .compile_protos(&["../proto/fleet.proto"], &["../proto"])?;
    Ok(())
}
