//! Hands the linker script to the final link of the probe binary.
//!
//! Only link arguments live here; codegen flags (no SSE, static relocation model,
//! no red zone) are set by build.sh because they must not apply to this build script.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
}
