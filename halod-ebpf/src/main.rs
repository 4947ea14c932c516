// Placeholder: the XDP program.
fn main() {}
