//! Route-assignment rules (placeholder).
