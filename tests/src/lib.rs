//! Black-box system tests live in tests/.
