import Quant

/// Temporary indirection until run-time ISA dispatch lands (KernelDispatch).
enum KernelTable {
    static func kernels(for t: GGMLType) -> QuantKernels? { QuantRegistry.kernels(for: t) }
}
