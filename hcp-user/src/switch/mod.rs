//! Changing a live device's table safely: the window (freeze, suspend,
//! load, resume, thaw), the guard process that undoes it if hcp dies inside,
//! and fault injection at every step, for tests.

pub mod fault;
pub mod guard;
pub mod window;
