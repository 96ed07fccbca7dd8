//! Typed views of resources owned by other systems. Only the fields the controllers read are
//! modelled; unknown fields are ignored on read. These types are never used to write a whole
//! foreign object back (that would drop the fields not modelled here): writes go through
//! targeted patches.

pub mod kubeovn;
pub mod submariner;
