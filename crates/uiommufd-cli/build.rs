//! Link the command with 2 MiB segment alignment, so that its text starts
//! on a 2 MiB boundary and `hugetext::remap` can move it onto huge pages
//! whole (see `src/hugetext.rs`).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=0x200000,-z,separate-code");
    }
}
