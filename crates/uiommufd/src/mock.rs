//! The selftest's `IOMMU_TEST_CMD` (the kernel's selftest.c).
