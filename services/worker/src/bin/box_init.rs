//! `nimbus-box-init <uid|-> <relay|-> <program> [args…]`: the box's init as a
//! small program of its own, so a cold start execs a few hundred kilobytes instead
//! of the whole worker (see `nimbus_worker::sandbox::init`). The worker falls back
//! to itself when this binary is not beside it.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    nimbus_worker::sandbox::init::run(&args)
}
