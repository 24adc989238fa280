//! Bundle format v1, trust root and buildstamps (see docs/bundle-format.md).
