//! BPF objects owner (placeholder).
