// Placeholder: the data-plane work replaces this with the aya-build eBPF build.
fn main() {}
