// The scale searches of ggml's reference K-quant quantizers (`make_qkx2_quants`, `make_qx_quants`), written so
// their f32 arithmetic happens in the same order as ggml's, so that quantizing gives the same bytes.

/// Fits x ≈ scale·L − min (L in 0...nmax, min ≥ 0) minimizing Σ w·(scale·L − min − x)², trying `nstep + 1`
/// candidate inverse scales (rmin + rdelta·i + nmax)/(max − min). Returns (scale, min) and fills `L`.
/// ggml's `make_qkx2_quants` with use_mad = false. `laux` is scratch of n bytes.
func makeQKX2Quants(_ n: Int, _ nmax: Int32, _ x: UnsafePointer<Float>, _ weights: UnsafePointer<Float>,
                    _ L: UnsafeMutablePointer<UInt8>, _ laux: UnsafeMutablePointer<UInt8>,
                    rmin: Float, rdelta: Float, nstep: Int) -> (scale: Float, min: Float) {
    var vmin = x[0], vmax = x[0]
    var sumW = weights[0]
    var sumX = sumW * x[0]
    for i in 1..<n {
        if x[i] < vmin { vmin = x[i] }
        if x[i] > vmax { vmax = x[i] }
        let w = weights[i]
        sumW += w
        sumX += w * x[i]
    }
    if vmin > 0 { vmin = 0 }
    if vmax == vmin {
        for i in 0..<n { L[i] = 0 }
        return (0, -vmin)
    }
    let fmax = Float(nmax)
    var iscale = fmax / (vmax - vmin)
    var scale = 1 / iscale
    var bestError: Float = 0
    for i in 0..<n {
        let l = nearestInt(iscale * (x[i] - vmin))
        L[i] = UInt8(truncatingIfNeeded: max(0, min(nmax, l)))
        var diff = scale * Float(L[i]) + vmin - x[i]
        diff = diff * diff
        bestError += weights[i] * diff
    }
    if nstep < 1 { return (scale, -vmin) }
    for step in 0...nstep {
        iscale = (rmin + rdelta * Float(step) + fmax) / (vmax - vmin)
        var sumL: Float = 0, sumL2: Float = 0, sumXL: Float = 0
        for i in 0..<n {
            let l = max(0, min(nmax, nearestInt(iscale * (x[i] - vmin))))
            laux[i] = UInt8(truncatingIfNeeded: l)
            let w = weights[i]
            let fl = Float(l)
            sumL += w * fl
            sumL2 += w * fl * fl
            sumXL += w * fl * x[i]
        }
        let D = sumW * sumL2 - sumL * sumL
        if D > 0 {
            var thisScale = (sumW * sumXL - sumX * sumL) / D
            var thisMin = (sumL2 * sumX - sumL * sumXL) / D
            if thisMin > 0 {
                thisMin = 0
                thisScale = sumXL / sumL2
            }
            var curError: Float = 0
            for i in 0..<n {
                var diff = thisScale * Float(laux[i]) + thisMin - x[i]
                diff = diff * diff
                curError += weights[i] * diff
            }
            if curError < bestError {
                for i in 0..<n { L[i] = laux[i] }
                bestError = curError
                scale = thisScale
                vmin = thisMin
            }
        }
    }
    return (scale, -vmin)
}

/// Fits x ≈ scale·(L − nmax) with L − nmax in −nmax..<nmax, weighting by x² (ggml's `make_qx_quants` with
/// rmse_type = 1 and no importance weights), trying 19 inverse scales −(nmax + 0.1·i)/max. Fills `L` with the
/// offset values (0..<2·nmax) and returns the scale.
func makeQXQuants(_ n: Int, _ nmax: Int32, _ x: UnsafePointer<Float>, _ L: UnsafeMutablePointer<Int8>) -> Float {
    var vmax: Float = 0, amax: Float = 0
    for i in 0..<n where abs(x[i]) > amax {
        amax = abs(x[i]); vmax = x[i]
    }
    if amax < 1e-15 {
        for i in 0..<n { L[i] = 0 }
        return 0
    }
    let fmax = Float(nmax)
    var iscale = -fmax / vmax
    var sumLX: Float = 0, sumL2: Float = 0
    for i in 0..<n {
        let l = max(-nmax, min(nmax - 1, nearestInt(iscale * x[i])))
        L[i] = Int8(truncatingIfNeeded: l + nmax)
        let w = x[i] * x[i]
        let fl = Float(l)
        sumLX += w * x[i] * fl
        sumL2 += w * fl * fl
    }
    var scale: Float = sumL2 != 0 ? sumLX / sumL2 : 0
    var best = scale * sumLX
    for step in -9...9 where step != 0 {
        iscale = -(fmax + 0.1 * Float(step)) / vmax
        sumLX = 0
        sumL2 = 0
        for i in 0..<n {
            let l = max(-nmax, min(nmax - 1, nearestInt(iscale * x[i])))
            let w = x[i] * x[i]
            let fl = Float(l)
            sumLX += w * x[i] * fl
            sumL2 += w * fl * fl
        }
        if sumL2 > 0 && sumLX * sumLX > best * sumL2 {
            for i in 0..<n {
                L[i] = Int8(truncatingIfNeeded: nmax + max(-nmax, min(nmax - 1, nearestInt(iscale * x[i]))))
            }
            scale = sumLX / sumL2
            best = scale * sumLX
        }
    }
    return scale
}
