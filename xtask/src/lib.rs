//! halod's developer tasks as a library, so tests can use the test bed.
