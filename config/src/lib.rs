//! The Planet configuration: one struct filled from the kernel command line today and from
//! cloud-init datasources later.
