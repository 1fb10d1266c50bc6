//! cloud-init seeds: NoCloud (`cidata`) and ConfigDrive (`config-2`) as ISO 9660 or FAT images.
