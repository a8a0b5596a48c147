//! Types shared by the Padis XDP program and its userspace loader (map keys and values).
#![no_std]
