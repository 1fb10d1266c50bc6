//! `kiln boot`: boot an image in QEMU and give a verdict from its serial console.
