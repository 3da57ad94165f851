// dask-kaas built-in kernel library: float32, row-major.
//
// Every kernel walks its work with grid-stride loops over the *whole* launch (all three grid
// and block dimensions are flattened), so any grid/block shape yields the complete, correct
// result. The one exception is sgemm, whose shared-memory tiling needs block == (16, 16, 1);
// the library declares that as a launch constraint.
//
// Parameters are declared scalars first, then buffers, matching how dask-kaas passes them.

#define KAAS_TILE 16
#define KAAS_MAX_THREADS 1024

// Linear index of this thread in its block, and the block's thread count.
__device__ __forceinline__ int kaas_tid() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
__device__ __forceinline__ int kaas_nthreads() {
    return blockDim.x * blockDim.y * blockDim.z;
}
// Linear index of this block in the grid, and the grid's block count.
__device__ __forceinline__ long long kaas_bid() {
    return blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
}
__device__ __forceinline__ long long kaas_nblocks() {
    return (long long)gridDim.x * gridDim.y * gridDim.z;
}
// First index and stride of a grid-stride loop over the whole launch.
__device__ __forceinline__ long long kaas_gid() {
    return kaas_bid() * kaas_nthreads() + kaas_tid();
}
__device__ __forceinline__ long long kaas_gstride() {
    return kaas_nblocks() * kaas_nthreads();
}

// Block-wide sum or max of v, for any thread count from 1 to 1024 (not only powers of two).
// Every thread of the block must call it; all of them get the result.
__device__ float kaas_block_reduce(float v, float* s, bool is_max) {
    const int tid = kaas_tid();
    s[tid] = v;
    __syncthreads();
    for (int active = kaas_nthreads(); active > 1;) {
        const int half = (active + 1) >> 1;
        if (tid < active - half) {
            const float o = s[tid + half];
            s[tid] = is_max ? fmaxf(s[tid], o) : s[tid] + o;
        }
        __syncthreads();
        active = half;
    }
    const float r = s[0];
    __syncthreads();  // s may be reused right after
    return r;
}

// y[i] = v for i < n
extern "C" __global__ void fill(int n, float v, float* __restrict__ y) {
    for (long long i = kaas_gid(); i < n; i += kaas_gstride()) y[i] = v;
}

// c = a + b over n elements
extern "C" __global__ void vadd(int n, const float* __restrict__ a, const float* __restrict__ b,
                                float* __restrict__ c) {
    for (long long i = kaas_gid(); i < n; i += kaas_gstride()) c[i] = a[i] + b[i];
}

// y += alpha * x over n elements
extern "C" __global__ void axpy(int n, float alpha, const float* __restrict__ x,
                                float* __restrict__ y) {
    for (long long i = kaas_gid(); i < n; i += kaas_gstride()) y[i] += alpha * x[i];
}

// C = A @ B with A MxK, B KxN, C MxN. Needs block == (16, 16, 1). Output tiles are visited with
// grid-stride loops: columns over blockIdx.x, rows over blockIdx.y and blockIdx.z.
extern "C" __global__ void sgemm(int M, int N, int K, const float* __restrict__ A,
                                 const float* __restrict__ B, float* __restrict__ C) {
    __shared__ float As[KAAS_TILE][KAAS_TILE];
    __shared__ float Bs[KAAS_TILE][KAAS_TILE];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row_tiles = (M + KAAS_TILE - 1) / KAAS_TILE;
    const int col_tiles = (N + KAAS_TILE - 1) / KAAS_TILE;
    const int k_tiles = (K + KAAS_TILE - 1) / KAAS_TILE;
    const int row_start = blockIdx.y + gridDim.y * blockIdx.z;
    const int row_stride = gridDim.y * gridDim.z;
    // Loop bounds depend only on block-uniform values, so every __syncthreads is reached by all.
    for (int rt = row_start; rt < row_tiles; rt += row_stride) {
        for (int ct = blockIdx.x; ct < col_tiles; ct += gridDim.x) {
            const int r = rt * KAAS_TILE + ty;
            const int c = ct * KAAS_TILE + tx;
            float acc = 0.0f;
            for (int kt = 0; kt < k_tiles; ++kt) {
                const int ka = kt * KAAS_TILE + tx;
                const int kb = kt * KAAS_TILE + ty;
                As[ty][tx] = (r < M && ka < K) ? A[(long long)r * K + ka] : 0.0f;
                Bs[ty][tx] = (kb < K && c < N) ? B[(long long)kb * N + c] : 0.0f;
                __syncthreads();
#pragma unroll
                for (int k = 0; k < KAAS_TILE; ++k) acc += As[ty][k] * Bs[k][tx];
                __syncthreads();
            }
            if (r < M && c < N) C[(long long)r * N + c] = acc;
        }
    }
}

// x[r, c] = max(x[r, c] + bias[c], 0), in place
extern "C" __global__ void bias_relu(int rows, int cols, const float* __restrict__ bias,
                                     float* __restrict__ x) {
    const long long total = (long long)rows * cols;
    for (long long i = kaas_gid(); i < total; i += kaas_gstride()) {
        x[i] = fmaxf(x[i] + bias[i % cols], 0.0f);
    }
}

// y[r, :] = softmax(x[r, :]), numerically stable; one block per row (grid-stride over rows).
extern "C" __global__ void softmax_rows(int rows, int cols, const float* __restrict__ x,
                                        float* __restrict__ y) {
    __shared__ float s[KAAS_MAX_THREADS];
    const int tid = kaas_tid(), nt = kaas_nthreads();
    for (long long r = kaas_bid(); r < rows; r += kaas_nblocks()) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        float m = -__int_as_float(0x7f800000);  // -inf; NVRTC has no <math.h> INFINITY
        for (int c = tid; c < cols; c += nt) m = fmaxf(m, xr[c]);
        m = kaas_block_reduce(m, s, true);
        float sum = 0.0f;
        for (int c = tid; c < cols; c += nt) sum += expf(xr[c] - m);
        sum = kaas_block_reduce(sum, s, false);
        const float inv = 1.0f / sum;
        for (int c = tid; c < cols; c += nt) yr[c] = expf(xr[c] - m) * inv;
    }
}

// One Jacobi iteration: x_next[i] = (b[i] - sum_{j != i} A[i, j] * x[j]) / A[i, i]
extern "C" __global__ void jacobi_step(int n, const float* __restrict__ A,
                                       const float* __restrict__ b, const float* __restrict__ x,
                                       float* __restrict__ x_next) {
    for (long long i = kaas_gid(); i < n; i += kaas_gstride()) {
        const float* Ai = A + i * n;
        float acc = 0.0f;
        for (int j = 0; j < n; ++j) {
            if (j != i) acc += Ai[j] * x[j];
        }
        x_next[i] = (b[i] - acc) / Ai[i];
    }
}

// out[0] += sum(x[:n]): a shared-memory reduction per block, then one atomicAdd per block.
// It accumulates into out, so out must start at zero; dask-kaas zero-fills output ("o")
// buffers, which makes out[0] the sum.
extern "C" __global__ void reduce_sum(int n, const float* __restrict__ x, float* __restrict__ out) {
    __shared__ float s[KAAS_MAX_THREADS];
    float acc = 0.0f;
    for (long long i = kaas_gid(); i < n; i += kaas_gstride()) acc += x[i];
    acc = kaas_block_reduce(acc, s, false);
    if (kaas_tid() == 0 && acc != 0.0f) atomicAdd(out, acc);
}
