//! `kiln deploy ovh SERVICE_NAME --image-url URL`: OVHcloud's API v1 for
//! a BYOLinux reinstall. Credentials as OVH's own clients find them
//! (`config`), requests signed as the API requires (`sign`), the body
//! built from the build manifest and checked against OVH's schema before
//! anything is sent (`reinstall`, `schema`), a client that maps error
//! answers to advice (`client`), and the reinstall followed step by step
//! (`install`). Non-goals: OAuth2, API v2, installing other templates.

pub mod client;
pub mod config;
pub mod install;
pub mod reinstall;
pub mod schema;
pub mod sign;
