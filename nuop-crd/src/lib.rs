//! nuop-crd
