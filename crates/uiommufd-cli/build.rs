//! Link the command with 2 MiB segment alignment, so that its text starts
//! on a 2 MiB boundary and `hugetext::remap` can move it onto huge pages
//! whole (see `src/hugetext.rs`), and with `hot-code.ld`, which lays the
//! dirty-bitmap read's functions out in one block at the start of that
//! text (see the comment in it).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=0x200000,-z,separate-code");
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
        println!("cargo:rerun-if-changed=hot-code.ld");
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/hot-code.ld");
    }
}
