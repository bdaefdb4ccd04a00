// Native CPU kernels for l_inf-distance, l_p-distance and SortNet (top-K) neurons.
//
// Built on first use by lipkit.nn.distance.native (plain C ABI, loaded with ctypes; no torch
// headers; about 10 s of compiler time, once per source version and machine).  All arrays are
// dense row-major:
//   x: (B, N)   w: (M, N)   y, g: (B, M)   code: (B, M) or (B, M, K) int32   gx: (B, N)   gw: (M, N)
// A "code" stores the chosen coordinate i together with the sign s = sign(x[b, i] - w[o, i]) as
// s * (i + 1) (0 when the distance is 0, whose subgradient we take to be 0).
//
// Tie rule (deterministic, shared with the pure-torch kernels and the references in the tests):
// the first (lowest) index among equal distances wins; for top-K, equal distances are ordered by
// increasing index (a stable descending sort).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define LK_VBYTES 64
#elif defined(__AVX__)
#define LK_VBYTES 32
#else
#define LK_VBYTES 16
#endif

namespace {

template <typename T> struct VecT;
template <> struct VecT<float> {
  typedef float v __attribute__((vector_size(LK_VBYTES)));
  typedef int32_t vi __attribute__((vector_size(LK_VBYTES)));
  typedef float vu __attribute__((vector_size(LK_VBYTES), aligned(4), may_alias));
  static constexpr int32_t absmask = 0x7fffffff;
};
template <> struct VecT<double> {
  typedef double v __attribute__((vector_size(LK_VBYTES)));
  typedef int64_t vi __attribute__((vector_size(LK_VBYTES)));
  typedef double vu __attribute__((vector_size(LK_VBYTES), aligned(8), may_alias));
  static constexpr int64_t absmask = 0x7fffffffffffffffLL;
};

template <typename T> constexpr int lanes() { return LK_VBYTES / sizeof(T); }

template <typename T> inline typename VecT<T>::v load(const T* p) {
  return *reinterpret_cast<const typename VecT<T>::vu*>(p);
}
template <typename T> inline void store(T* p, typename VecT<T>::v v) {
  *reinterpret_cast<typename VecT<T>::vu*>(p) = v;
}
// |d| and max(a, b) for finite inputs (the NaN conventions of the x86 instructions do not matter:
// the Python side rejects non-finite inputs).
template <typename T> inline typename VecT<T>::v vabs(typename VecT<T>::v d) {
  typedef typename VecT<T>::vi vi;
  return (typename VecT<T>::v)((vi)d & VecT<T>::absmask);
}
template <typename T> inline typename VecT<T>::v vmax(typename VecT<T>::v a, typename VecT<T>::v b);
#if defined(__AVX512F__)
template <> inline VecT<float>::v vmax<float>(VecT<float>::v a, VecT<float>::v b) {
  return (VecT<float>::v)_mm512_max_ps((__m512)a, (__m512)b);
}
template <> inline VecT<double>::v vmax<double>(VecT<double>::v a, VecT<double>::v b) {
  return (VecT<double>::v)_mm512_max_pd((__m512d)a, (__m512d)b);
}
#elif defined(__AVX__)
template <> inline VecT<float>::v vmax<float>(VecT<float>::v a, VecT<float>::v b) {
  return (VecT<float>::v)_mm256_max_ps((__m256)a, (__m256)b);
}
template <> inline VecT<double>::v vmax<double>(VecT<double>::v a, VecT<double>::v b) {
  return (VecT<double>::v)_mm256_max_pd((__m256d)a, (__m256d)b);
}
#elif defined(__SSE2__)
template <> inline VecT<float>::v vmax<float>(VecT<float>::v a, VecT<float>::v b) {
  return (VecT<float>::v)_mm_max_ps((__m128)a, (__m128)b);
}
template <> inline VecT<double>::v vmax<double>(VecT<double>::v a, VecT<double>::v b) {
  return (VecT<double>::v)_mm_max_pd((__m128d)a, (__m128d)b);
}
#else
template <typename T> inline typename VecT<T>::v vmax(typename VecT<T>::v a, typename VecT<T>::v b) {
  return a > b ? a : b;
}
#endif
template <typename T> inline typename VecT<T>::v splat(T s) {
  return s - typename VecT<T>::v{};  // broadcast; s - (+0) == s exactly, also for s = -0
}
template <typename T> inline T hmax(typename VecT<T>::v v) {
  T m = v[0];
  for (int l = 1; l < lanes<T>(); ++l) m = v[l] > m ? v[l] : m;
  return m;
}
template <typename T> inline T hsum(typename VecT<T>::v v) {
  T s = 0;
  for (int l = 0; l < lanes<T>(); ++l) s += v[l];
  return s;
}

// Bit l set iff a[l] == b[l] (resp. a[l] > b[l], a[l] >= b[l]).  cmp_mask<P> compares with the
// predicate P (LK_EQ, LK_GT, LK_GE: the AVX predicates where AVX is there), one overload per element type.
#if defined(__AVX512F__) || defined(__AVX__)
enum { LK_EQ = _CMP_EQ_OQ, LK_GT = _CMP_GT_OQ, LK_GE = _CMP_GE_OQ };
#else
enum { LK_EQ = 0, LK_GT = 1, LK_GE = 2 };
#endif
#if defined(__AVX512F__)
template <int P> inline uint32_t cmp_mask(VecT<float>::v a, VecT<float>::v b) {
  return _mm512_cmp_ps_mask((__m512)a, (__m512)b, P);
}
template <int P> inline uint32_t cmp_mask(VecT<double>::v a, VecT<double>::v b) {
  return _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, P);
}
#elif defined(__AVX__)
template <int P> inline uint32_t cmp_mask(VecT<float>::v a, VecT<float>::v b) {
  return _mm256_movemask_ps(_mm256_cmp_ps((__m256)a, (__m256)b, P));
}
template <int P> inline uint32_t cmp_mask(VecT<double>::v a, VecT<double>::v b) {
  return _mm256_movemask_pd(_mm256_cmp_pd((__m256d)a, (__m256d)b, P));
}
#else
template <int P, typename V> inline uint32_t cmp_mask(V a, V b) {
  uint32_t m = 0;
  for (int l = 0; l < (int)(sizeof(V) / sizeof(a[0])); ++l)
    m |= (uint32_t)(P == LK_EQ ? a[l] == b[l] : P == LK_GT ? a[l] > b[l] : a[l] >= b[l]) << l;
  return m;
}
#endif
template <typename T> inline uint32_t mask_eq(typename VecT<T>::v a, typename VecT<T>::v b) {
  return cmp_mask<LK_EQ>(a, b);
}
template <typename T> inline uint32_t mask_gt(typename VecT<T>::v a, typename VecT<T>::v b) {
  return cmp_mask<LK_GT>(a, b);
}
template <typename T> inline uint32_t mask_ge(typename VecT<T>::v a, typename VecT<T>::v b) {
  return cmp_mask<LK_GE>(a, b);
}

// ----------------------------------------------------------------------------- threading

// Run fn(item) for item in [0, n_items) on up to nthreads threads (dynamic scheduling).
template <typename F> void parallel_for(int64_t n_items, int nthreads, F fn) {
  if (n_items <= 0) return;
  int nt = (int)std::min<int64_t>(std::max(1, nthreads), n_items);
  if (nt == 1) {
    for (int64_t i = 0; i < n_items; ++i) fn(i, 0);
    return;
  }
  std::atomic<int64_t> next(0);
  auto worker = [&](int tid) {
    for (int64_t i = next.fetch_add(1); i < n_items; i = next.fetch_add(1)) fn(i, tid);
  };
  std::vector<std::thread> pool;
  pool.reserve(nt - 1);
  for (int t = 1; t < nt; ++t) pool.emplace_back(worker, t);
  worker(0);
  for (auto& th : pool) th.join();
}

// Blocks of the (B, M) output: BB x OB pairs per work item (x block and w block stay in L2).
constexpr int64_t BB = 64, OB = 64;

#if LK_VBYTES == 64
constexpr int RB = 4, RO = 4;  // 16 accumulators of 32 zmm registers
#else
constexpr int RB = 3, RO = 3;  // 9 accumulators of 16 ymm registers
#endif

// Horizontal max of one vector.
template <typename T> inline T hmax_v(typename VecT<T>::v v);
#if defined(__AVX512F__)
template <> inline float hmax_v<float>(VecT<float>::v v) { return _mm512_reduce_max_ps((__m512)v); }
template <> inline double hmax_v<double>(VecT<double>::v v) { return _mm512_reduce_max_pd((__m512d)v); }
#else
template <typename T> inline T hmax_v(typename VecT<T>::v v) { return hmax<T>(v); }
#endif

// For a RB x RO tile of (x row r, w row c) pairs: out[r * RO + c] = max_i |x_r[i] - w_c[i]|
// (vectorised along i).  Rows beyond the valid ones are clamped copies whose results the caller
// ignores.
template <typename T>
inline void tile_max(const T* const* xr, const T* const* wr, int64_t N, T* out) {
  typedef typename VecT<T>::v v;
  constexpr int L = lanes<T>();
  v acc[RB][RO];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < RO; ++c) acc[r][c] = splat<T>(0);
  int64_t i = 0;
  for (; i + L <= N; i += L) {
    v xv[RB];
    for (int r = 0; r < RB; ++r) xv[r] = load(xr[r] + i);
    for (int c = 0; c < RO; ++c) {
      const v wv = load(wr[c] + i);
      for (int r = 0; r < RB; ++r) acc[r][c] = vmax<T>(acc[r][c], vabs<T>(xv[r] - wv));
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < RO; ++c) {
      T m = hmax_v<T>(acc[r][c]);
      for (int64_t j = i; j < N; ++j) {
        const T d = std::fabs(xr[r][j] - wr[c][j]);
        m = d > m ? d : m;
      }
      out[r * RO + c] = m;
    }
}

inline int32_t make_code(int64_t i, double diff) {
  return diff > 0 ? (int32_t)(i + 1) : (diff < 0 ? -(int32_t)(i + 1) : 0);
}

// Loop over the (b, o) tiles of one work item and call fn(b0, nb, o0, no, xr, wr).
template <typename T, int RB = RB, int RO = RO, typename F>
inline void for_tiles(const T* x, const T* w, int64_t B, int64_t M, int64_t N, int64_t item, F fn) {
  const int64_t n_ob = (M + OB - 1) / OB;
  const int64_t b_lo = (item / n_ob) * BB, o_lo = (item % n_ob) * OB;
  const int64_t b_hi = std::min(B, b_lo + BB), o_hi = std::min(M, o_lo + OB);
  const T* xr[RB];
  const T* wr[RO];
  for (int64_t b0 = b_lo; b0 < b_hi; b0 += RB) {
    const int nb = (int)std::min<int64_t>(RB, b_hi - b0);
    for (int r = 0; r < RB; ++r) xr[r] = x + (b0 + std::min(r, nb - 1)) * N;
    for (int64_t o0 = o_lo; o0 < o_hi; o0 += RO) {
      const int no = (int)std::min<int64_t>(RO, o_hi - o0);
      for (int c = 0; c < RO; ++c) wr[c] = w + (o0 + std::min(c, no - 1)) * N;
      fn(b0, nb, o0, no, xr, wr);
    }
  }
}

inline int64_t n_items(int64_t B, int64_t M) { return ((B + BB - 1) / BB) * ((M + OB - 1) / OB); }

// ----------------------------------------------------------------------------- l_inf distance

// The l_inf forward runs in a "lanes over pairs" layout: one operand A (x or w, whichever pads
// better to whole vectors) is transposed to at[i][p], so that a vector holds coordinate i of L
// different rows p, and the other operand's coordinate bq[q][i] is broadcast.  Each lane is then
// one (p, q) pair: no horizontal reductions.  For the argmax, the running maximum is compared at
// the end of every chunk of CH coordinates with its value at the start of the chunk; the last
// chunk where it strictly increased is the first chunk containing the final maximum, and a short
// scan of that chunk (in the original row layout) finds the first maximal index.
#if LK_VBYTES == 64
constexpr int RA = 4, RQ = 4;  // 16 accumulators of 32 zmm registers
#elif LK_VBYTES == 32
constexpr int RA = 3, RQ = 3;  // 9 of 16 ymm registers
#else
constexpr int RA = 3, RQ = 3;
#endif
constexpr int64_t QB = 64;  // rows of the broadcast operand per work item

template <typename T> constexpr int64_t chunk() { return 2 * lanes<T>(); }

// acc[r][q] (lane l <-> row p0 + r L + l of A, row q of the broadcast operand) and, if TRACK, the
// chunk number at which each lane's maximum was last raised.  N is the number of (kept)
// coordinates; with HC, coordinate i of the broadcast rows is column cols[i].
template <typename T, int NA, bool TRACK, bool HC>
inline void lane_tile(const T* at, int64_t ldp, const T* const* bq, int64_t N, const int64_t* cols,
                      typename VecT<T>::v* out_acc, typename VecT<T>::vi* out_chunk) {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vi vi;
  constexpr int L = lanes<T>();
  constexpr int64_t CH = chunk<T>();
  v acc[NA][RQ];
  v prev[NA][RQ];
  vi idx[NA][RQ];
  for (int r = 0; r < NA; ++r)
    for (int q = 0; q < RQ; ++q) {
      acc[r][q] = splat<T>(0);
      if (TRACK) idx[r][q] = vi{};
    }
  int64_t c = 0;
  for (int64_t i0 = 0; i0 < N; i0 += CH, ++c) {
    const int64_t i1 = TRACK ? std::min(N, i0 + CH) : N;
    if (TRACK)
      for (int r = 0; r < NA; ++r)
        for (int q = 0; q < RQ; ++q) prev[r][q] = acc[r][q];
    for (int64_t i = i0; i < i1; ++i) {
      v av[NA];
      for (int r = 0; r < NA; ++r) av[r] = load(at + i * ldp + r * L);
      const int64_t ci = HC ? cols[i] : i;
      for (int q = 0; q < RQ; ++q) {
        const T bv = bq[q][ci];
        for (int r = 0; r < NA; ++r) acc[r][q] = vmax<T>(acc[r][q], vabs<T>(av[r] - bv));
      }
    }
    if (TRACK) {
      const vi cv = (vi{}) + (typename std::remove_reference<decltype(idx[0][0][0])>::type)c;
      for (int r = 0; r < NA; ++r)
        for (int q = 0; q < RQ; ++q) idx[r][q] = acc[r][q] > prev[r][q] ? cv : idx[r][q];
    } else {
      break;
    }
  }
  for (int r = 0; r < NA; ++r)
    for (int q = 0; q < RQ; ++q) {
      out_acc[r * RQ + q] = acc[r][q];
      if (TRACK) out_chunk[r * RQ + q] = idx[r][q];
    }
}

// First i in chunk c with |x[i] - w[i]| == y (y > 0 is the maximum; the chunk contains it).
template <typename T> inline int64_t first_in_chunk(const T* x, const T* w, int64_t N, int64_t c, T y) {
  constexpr int L = lanes<T>();
  const int64_t i0 = c * chunk<T>(), i1 = std::min(N, i0 + chunk<T>());
  static_assert(chunk<T>() == 2 * L && 2 * L <= 32, "chunk must be two vectors");
  if (i1 - i0 == 2 * L) {  // full chunk: branch-free
    const uint32_t m0 = mask_eq<T>(vabs<T>(load(x + i0) - load(w + i0)), splat<T>(y));
    const uint32_t m1 = mask_eq<T>(vabs<T>(load(x + i0 + L) - load(w + i0 + L)), splat<T>(y));
    return i0 + __builtin_ctz(m0 | (m1 << L) | (1u << (2 * L - 1)));
  }
  int64_t i = i0;
  for (; i + L <= i1; i += L) {
    const uint32_t m = mask_eq<T>(vabs<T>(load(x + i) - load(w + i)), splat<T>(y));
    if (m) return i + __builtin_ctz(m);
  }
  for (; i < i1; ++i)
    if (std::fabs(x[i] - w[i]) == y) return i;
  return i0;  // unreachable for finite inputs
}

// The same over kept columns: first position j of chunk c with |x[cols[j]] - w[cols[j]]| == y.
template <typename T>
inline int64_t first_in_chunk_cols(const T* x, const T* w, int64_t NK, const int64_t* cols, int64_t c, T y) {
  const int64_t j0 = c * chunk<T>(), j1 = std::min(NK, j0 + chunk<T>());
  for (int64_t j = j0; j < j1; ++j)
    if (std::fabs(x[cols[j]] - w[cols[j]]) == y) return j;
  return j0;  // unreachable for finite inputs
}

// Pack rows [p0, p0 + PB) of a (P, N) matrix as one transposed panel:
// panel[i * PB + j] = a[p0 + j, col(i)] for i < NK (zero for rows >= P), col(i) = cols[i] or i, so
// that the kernel reads one contiguous PB-wide line per coordinate.
template <typename T>
void pack_panel(const T* a, int64_t P, int64_t N, int64_t NK, const int64_t* cols, int64_t p0, int64_t PB,
                T* panel) {
  constexpr int64_t IB = 64;  // transpose in IB x PB blocks (cache friendly)
  for (int64_t i0 = 0; i0 < NK; i0 += IB) {
    const int64_t i1 = std::min(NK, i0 + IB);
    for (int64_t j = 0; j < PB; ++j) {
      const int64_t p = p0 + j;
      if (p < P) {
        const T* src = a + p * N;
        if (cols)
          for (int64_t i = i0; i < i1; ++i) panel[i * PB + j] = src[cols[i]];
        else
          for (int64_t i = i0; i < i1; ++i) panel[i * PB + j] = src[i];
      } else {
        for (int64_t i = i0; i < i1; ++i) panel[i * PB + j] = T(0);
      }
    }
  }
}

template <typename T, int NA, bool TRACK, bool HC>
void linf_lanes_block(const T* at, int64_t ldp, const T* bmat, int64_t P, int64_t Q, int64_t N, int64_t NK,
                      const int64_t* cols, int64_t p0, int64_t q_lo, int64_t q_hi, bool a_is_w, const T* x,
                      const T* w, int64_t M, T* y, int32_t* code) {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vi vi;
  constexpr int L = lanes<T>();
  v acc[NA * RQ];
  vi chk[NA * RQ];
  const T* bq[RQ];
  for (int64_t q0 = q_lo; q0 < q_hi; q0 += RQ) {
    const int nq = (int)std::min<int64_t>(RQ, q_hi - q0);
    for (int q = 0; q < RQ; ++q) bq[q] = bmat + (q0 + std::min(q, nq - 1)) * N;
    lane_tile<T, NA, TRACK, HC>(at, ldp, bq, NK, cols, acc, chk);
    for (int r = 0; r < NA; ++r) {
      for (int q = 0; q < nq; ++q)
        for (int l = 0; l < L; ++l) {
          const int64_t p = p0 + r * L + l;
          if (p >= P) break;
          const int64_t b = a_is_w ? q0 + q : p, o = a_is_w ? p : q0 + q;
          const T m = acc[r * RQ + q][l];
          y[b * M + o] = m;
          if (TRACK) {
            int32_t cd = 0;
            if (m > 0) {
              const T* xb = x + b * N;
              const T* wo = w + o * N;
              const int64_t ck = (int64_t)chk[r * RQ + q][l];
              const int64_t i = HC ? cols[first_in_chunk_cols<T>(xb, wo, NK, cols, ck, m)]
                                   : first_in_chunk<T>(xb, wo, N, ck, m);
              cd = make_code(i, (double)xb[i] - (double)wo[i]);
            }
            code[b * M + o] = cd;
          }
        }
    }
  }
}

// The lanes-over-pairs driver: picks A (x or w, whichever pads better to whole vectors; ties: the
// larger), cuts it into panels of RA * L rows and calls fn(lay, panel, p0, na) for each panel
// (na = vectors of the panel holding real rows), one panel per work item.  Each thread packs its
// panel into its own buffer (memory: threads x RA L x N, not a copy of A).
template <typename T> struct Layout {
  bool a_is_w;
  const T* a;     // rows on the lanes
  const T* bmat;  // rows that are broadcast
  int64_t P, Q, ldp;
};

template <typename T, typename F>
void for_panels(const T* x, const T* w, int64_t B, int64_t M, int64_t N, int64_t NK, const int64_t* cols, int nt,
                F fn) {
  constexpr int L = lanes<T>();
  const int64_t pad_b = (B + L - 1) / L * L, pad_m = (M + L - 1) / L * L;
  // less padding waste first; on a tie, lanes over the smaller operand (less packing)
  const bool a_is_w = pad_m * B < pad_b * M || (pad_m * B == pad_b * M && M < B);
  const Layout<T> lay{a_is_w, a_is_w ? w : x, a_is_w ? x : w, a_is_w ? M : B, a_is_w ? B : M,
                      a_is_w ? pad_m : pad_b};
  const int64_t PB = RA * L;
  const int64_t n_pb = (lay.ldp + PB - 1) / PB;
  // few panels (a small operand on the lanes): also split the broadcast rows, so that every
  // thread has work; each such item packs its own copy of the (small) panel
  const int64_t n_qs = std::min<int64_t>(lay.Q, std::max<int64_t>(1, (2 * std::max(1, nt) + n_pb - 1) / n_pb));
  const int64_t qs = (lay.Q + n_qs - 1) / n_qs;
  const int ntu = (int)std::min<int64_t>(std::max(1, nt), n_pb * n_qs);
  std::vector<std::vector<T>> panels(ntu, std::vector<T>((size_t)PB * NK));
  parallel_for(n_pb * n_qs, ntu, [&](int64_t item, int tid) {
    const int64_t pb = item / n_qs, q_lo = (item % n_qs) * qs, q_hi = std::min(lay.Q, q_lo + qs);
    if (q_lo >= q_hi) return;
    const int64_t p0 = pb * PB;
    T* panel = panels[tid].data();
    pack_panel<T>(lay.a, lay.P, N, NK, cols, p0, PB, panel);
    fn(lay, (const T*)panel, p0, (int)std::min<int64_t>(RA, (lay.ldp - p0) / L), q_lo, q_hi);
  });
}

template <typename T, bool TRACK, bool HC>
void linf_lanes(const T* x, const T* w, int64_t B, int64_t M, int64_t N, int64_t NK, const int64_t* cols, T* y,
                int32_t* code, int nt) {
  constexpr int L = lanes<T>();
  for_panels<T>(x, w, B, M, N, NK, cols, nt, [&](const Layout<T>& lay, const T* panel, int64_t p0, int na, int64_t q_from,
                                       int64_t q_to) {
    for (int64_t q_lo = q_from; q_lo < q_to; q_lo += QB) {
      const int64_t q_hi = std::min(q_to, q_lo + QB);
      switch (na) {
#define LK_CASE(K) \
  case K: \
    linf_lanes_block<T, (K <= RA ? K : RA), TRACK, HC>(panel, RA * L, lay.bmat, lay.P, lay.Q, N, NK, cols, p0, \
                                                       q_lo, q_hi, lay.a_is_w, x, w, M, y, code); \
    break;
        LK_CASE(1) LK_CASE(2) LK_CASE(3) LK_CASE(4)
#undef LK_CASE
        default: break;
      }
    }
  });
}

// y[b, o] = max over the columns cols[0..NK) (all N columns if cols == nullptr) of |x[b, i] - w[o, i]|;
// codes hold the original column index.
template <typename T>
void linf_forward(const T* x, const T* w, int64_t B, int64_t M, int64_t N, const int64_t* cols, int64_t NK, T* y,
                  int32_t* code, int nt) {
  if (cols == nullptr) NK = N;
  if (code && cols) linf_lanes<T, true, true>(x, w, B, M, N, NK, cols, y, code, nt);
  else if (code) linf_lanes<T, true, false>(x, w, B, M, N, NK, nullptr, y, code, nt);
  else if (cols) linf_lanes<T, false, true>(x, w, B, M, N, NK, cols, y, nullptr, nt);
  else linf_lanes<T, false, false>(x, w, B, M, N, NK, nullptr, y, nullptr, nt);
}

// gx[b, i] += s g[b, o*K + k] c[k],  gw[o, i] -= s g[b, o] c[k]  for code[b, o, k] = s (i + 1).
// coef == nullptr means c = 1 (K = 1).  gx, gw are zero-initialised by the caller (may be null).
// Decode s * (i + 1) into (i, s) without branches (code 0: i = 0, s = 0).
inline int32_t code_index(int32_t cd) { return std::max(std::abs(cd) - 1, 0); }
template <typename T> inline T code_sign(int32_t cd) { return T((cd > 0) - (cd < 0)); }

template <typename T, bool ONE>
void scatter_impl(const T* g, const int32_t* code, const T* coef, int64_t B, int64_t M, int64_t N, int64_t K,
                  T* gx, T* gw, int nt) {
  const int64_t chunk = 16;
  auto weight = [&](int64_t k) -> T { return ONE ? T(1) : coef[k]; };
  if (gx) {
    parallel_for((B + chunk - 1) / chunk, nt, [&](int64_t item, int) {
      for (int64_t b = item * chunk; b < std::min(B, (item + 1) * chunk); ++b) {
        T* gxr = gx + b * N;
        for (int64_t o = 0; o < M; ++o) {
          const T gv = g[b * M + o];
          const int32_t* cr = code + (b * M + o) * K;
          for (int64_t k = 0; k < (ONE ? 1 : K); ++k) gxr[code_index(cr[k])] += code_sign<T>(cr[k]) * gv * weight(k);
        }
      }
    });
  }
  if (gw) {
    parallel_for((M + chunk - 1) / chunk, nt, [&](int64_t item, int) {
      const int64_t o_lo = item * chunk, o_hi = std::min(M, (item + 1) * chunk);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t o = o_lo; o < o_hi; ++o) {
          const T gv = g[b * M + o];
          const int32_t* cr = code + (b * M + o) * K;
          T* gwr = gw + o * N;
          for (int64_t k = 0; k < (ONE ? 1 : K); ++k) gwr[code_index(cr[k])] -= code_sign<T>(cr[k]) * gv * weight(k);
        }
    });
  }
}

// gx[b, i] += s c[k] g[b, o],  gw[o, i] -= s c[k] g[b, o]  for code[b, o, k] = s (i + 1).
// coef == nullptr means K = 1 and c = 1.  gx, gw are zero-initialised by the caller (may be null).
template <typename T>
void scatter_backward(const T* g, const int32_t* code, const T* coef, int64_t B, int64_t M, int64_t N,
                      int64_t K, T* gx, T* gw, int nt) {
  if (coef == nullptr) scatter_impl<T, true>(g, code, coef, B, M, N, 1, gx, gw, nt);
  else scatter_impl<T, false>(g, code, coef, B, M, N, K, gx, gw, nt);
}

// ----------------------------------------------------------------------------- top-K (SortNet)


template <typename T> inline typename VecT<T>::v vmin(typename VecT<T>::v a, typename VecT<T>::v b) {
  return a < b ? a : b;
}

// y[b, o] = sum_k coef[k] d_(k) with d_(0) >= d_(1) >= ... the sorted |x[b] - w[o]| (ties: lower
// index first); code[b, o, k] records the index and sign of d_(k) when code != nullptr.
// Lanes-over-pairs layout: every lane keeps its pair's K largest distances in a list of K vectors
// sorted by (distance desc, index asc), updated by a branch-free insertion network
// (compare-exchange down the list).  A vector whose lanes all stay at or below the current K-th
// value skips the network (an equal distance with a larger index never enters).
template <typename T, bool IDX, int KC>
void topk_panel(const Layout<T>& lay, const T* panel, int64_t p0, int na, int64_t q_lo, int64_t q_hi, const T* x, const T* w, int64_t M,
                int64_t N, const T* coef, int64_t K_rt, T* y, int32_t* code, typename VecT<T>::v* rv_heap,
                typename VecT<T>::vi* ri_heap) {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vi vi;
  typedef typename std::remove_reference<decltype(ri_heap[0][0])>::type ii;
  constexpr int L = lanes<T>();
  // KC > 0: the list length is a compile-time constant and the list lives in registers
  const int64_t K = KC > 0 ? KC : K_rt;
  v rv_reg[KC > 0 ? KC : 1];
  vi ri_reg[KC > 0 ? KC : 1];
  v* rv = KC > 0 ? rv_reg : rv_heap;
  vi* ri = KC > 0 ? ri_reg : ri_heap;
  const int64_t PB = RA * L;
  for (int64_t q = q_lo; q < q_hi; ++q) {
    const T* bq = lay.bmat + q * N;
    for (int r = 0; r < na; ++r) {
      for (int64_t k = 0; k < K; ++k) {
        rv[k] = splat<T>(-1);  // below every distance: the first K coordinates always enter
        if (IDX) ri[k] = vi{};
      }
      const T* col = panel + r * L;
      for (int64_t i = 0; i < N; ++i) {
        v d = vabs<T>(load(col + i * PB) - bq[i]);
        if (KC == 0 && !mask_gt<T>(d, rv[K - 1])) continue;  // long lists: skip when nothing enters
        if (IDX) {
          vi di = vi{} + (ii)i;
          for (int64_t k = 0; k < K; ++k) {
            // (value desc, index asc) order: the carried element precedes an equal one iff its
            // index is lower (never the case for the new coordinate i, the largest index so far)
            const vi gt = (d > rv[k]) | ((d == rv[k]) & (di < ri[k]));
            const v keep = rv[k];
            const vi keep_i = ri[k];
            rv[k] = gt ? d : keep;
            ri[k] = gt ? di : keep_i;
            d = gt ? keep : d;
            di = gt ? keep_i : di;
          }
        } else {
          for (int64_t k = 0; k < K; ++k) {
            const v hi = vmax<T>(rv[k], d);
            d = vmin<T>(rv[k], d);
            rv[k] = hi;
          }
        }
      }
      for (int l = 0; l < L; ++l) {
        const int64_t p = p0 + r * L + l;
        if (p >= lay.P) break;
        const int64_t b = lay.a_is_w ? q : p, o = lay.a_is_w ? p : q;
        T s = 0;
        for (int64_t k = 0; k < K; ++k) s += coef[k] * rv[k][l];
        y[b * M + o] = s;
        if (IDX)
          for (int64_t k = 0; k < K; ++k) {
            const int64_t i = (int64_t)ri[k][l];
            code[(b * M + o) * K + k] = make_code(i, (double)x[b * N + i] - (double)w[o * N + i]);
          }
      }
    }
  }
}

template <typename T>
void topk_forward(const T* x, const T* w, const T* coef, int64_t B, int64_t M, int64_t N, int64_t K, T* y,
                  int32_t* code, int nt) {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vi vi;
  for_panels<T>(x, w, B, M, N, N, nullptr, nt, [&](const Layout<T>& lay, const T* panel, int64_t p0, int na,
                                                int64_t q_lo,
                                       int64_t q_hi) {
    std::vector<v> rv(K);
    std::vector<vi> ri(K);
    switch (K) {
#define LK_CASE(KC) \
  case KC: \
    if (code) topk_panel<T, true, KC>(lay, panel, p0, na, q_lo, q_hi, x, w, M, N, coef, K, y, code, rv.data(), ri.data()); \
    else topk_panel<T, false, KC>(lay, panel, p0, na, q_lo, q_hi, x, w, M, N, coef, K, y, nullptr, rv.data(), ri.data()); \
    break;
      LK_CASE(2) LK_CASE(3) LK_CASE(4) LK_CASE(5) LK_CASE(6) LK_CASE(7) LK_CASE(8)
#undef LK_CASE
      default:
        if (code) topk_panel<T, true, 0>(lay, panel, p0, na, q_lo, q_hi, x, w, M, N, coef, K, y, code, rv.data(), ri.data());
        else topk_panel<T, false, 0>(lay, panel, p0, na, q_lo, q_hi, x, w, M, N, coef, K, y, nullptr, rv.data(), ri.data());
    }
  });
}

// ----------------------------------------------------------------------------- l_p distance

template <typename T> inline T spow(T t, int64_t e) {
  T r = 1;
  T base = t;
  while (e) {
    if (e & 1) r *= base;
    base *= base;
    e >>= 1;
  }
  return r;
}

// l_p tiles (row layout, vectors along the coordinates): a whole tile is raised to the power at
// once, so the loop over the exponent's bits runs once per vector step, not once per pair.
#if LK_VBYTES == 64
constexpr int LFB = 2, LFO = 4, LBB = 2, LBO = 4;
#else
constexpr int LFB = 1, LFO = 4, LBB = 1, LBO = 2;
#endif

// t[j] <- base[j]^e for all j < NJ (e >= 1; binary powering from the most significant bit).
template <typename T, int NJ>
inline void tile_pow(typename VecT<T>::v* t, const typename VecT<T>::v* base, int64_t e) {
  for (int j = 0; j < NJ; ++j) t[j] = base[j];
  for (int bit = 62 - __builtin_clzll((unsigned long long)e); bit >= 0; --bit) {
    for (int j = 0; j < NJ; ++j) t[j] = t[j] * t[j];
    if ((e >> bit) & 1)
      for (int j = 0; j < NJ; ++j) t[j] = t[j] * base[j];
  }
}

// Negligible terms of an l_p sum.  With ratios r_i in [0, 1] of which the largest is 1 (forward:
// r = |d| / max |d|) or at least N^(-1/p) (backward: r = |d| / y), a term r^e below
// delta = epsilon / N^2 changes nothing a float of type T can hold: in the forward sum (>= 1) all such
// terms together add less than epsilon / N, and in the backward each is below epsilon / N of the
// pair's largest gradient entry (>= r_max^(p-1) >= 1 / N).  skip_below returns t = delta^(1/e), so
// r < t <=> r^e < delta: a vector of ratios that are all below t needs no powering.  For small
// exponents almost nothing is below t, so the test is not worth its cost and 0 is returned.
// skip = 0 powers every term (for side-by-side timing); it is an argument of each call, not a global.
template <typename T> inline T skip_below(int64_t N, int64_t e, int skip) {
  if (e < 24 || !skip) return T(0);
  const double delta = (double)std::numeric_limits<T>::epsilon() / ((double)N * (double)N);
  return (T)std::pow(delta, 1.0 / (double)e);
}

// True if every lane of every vector of the tile is below tv (a tile of negligible terms).
template <typename T, int NJ>
inline bool all_below(const typename VecT<T>::v* tile, typename VecT<T>::v tv) {
  typename VecT<T>::v m = tile[0];
  for (int j = 1; j < NJ; ++j) m = vmax<T>(m, tile[j]);
  return mask_ge<T>(m, tv) == 0;
}

// Bit j set iff vector j of the tile has a lane >= tv (a term that is not negligible).
template <typename T, int NJ>
inline uint32_t active_vectors(const typename VecT<T>::v* tile, typename VecT<T>::v tv) {
  uint32_t act = 0;
  for (int j = 0; j < NJ; ++j) act |= (uint32_t)(mask_ge<T>(tile[j], tv) != 0) << j;
  return act;
}

// Tiles with few active vectors: the active ones wait in a queue (their tile slot j and vector step
// i alongside) and are raised to the power NJ at a time, so the powering stays in registers and
// works on full tiles.  Powering only the active vectors of each tile one by one is slower than
// powering them all.  Tiles with more than half of their vectors active are powered whole, and
// below the exponent kQueueFrom the bookkeeping costs more than the powering it saves (measured
// with bench/linf_lp.py): there only tiles that are negligible as a whole are skipped.
constexpr int64_t kQueueFrom = 200;
template <typename T, int NJ> struct PowQueue {
  typedef typename VecT<T>::v v;
  v val[2 * NJ];  // a step pushes at most NJ / 2 onto at most NJ - 1 waiting: < 2 NJ
  int slot[2 * NJ];
  int64_t step[2 * NJ];
  int n = 0;
  // Appends the vectors of tile selected by act (branch-free: each is written, only selected ones count).
  inline void push(const v* tile, uint32_t act, int64_t i) {
    for (int j = 0; j < NJ; ++j) {
      val[n] = tile[j];
      slot[n] = j;
      step[n] = i;
      n += (act >> j) & 1;
    }
  }
  // Pads the queue with zeros (0^e = 0 adds nothing) up to NJ entries.
  inline void pad() {
    for (; n < NJ; ++n) {
      val[n] = splat<T>(0);
      slot[n] = 0;
      step[n] = 0;
    }
  }
  // Drops the first NJ entries.
  inline void pop() {
    n -= NJ;
    for (int k = 0; k < n; ++k) {
      val[k] = val[NJ + k];
      slot[k] = slot[NJ + k];
      step[k] = step[NJ + k];
    }
  }
};

// y[b, o] = ||x[b] - w[o]||_p for an integer p >= 1, scaled by the maximum to avoid overflow:
// y = m (sum_i (d_i / m)^p)^(1/p), m = max_i d_i.
template <typename T>
void lp_forward(const T* x, const T* w, int64_t B, int64_t M, int64_t N, int64_t p, T* y, int skip, int nt) {
  typedef typename VecT<T>::v v;
  constexpr int L = lanes<T>();
  constexpr int NJ = LFB * LFO;
  const T tskip = skip_below<T>(N, p, skip);
  const v tv = splat<T>(tskip);
  const bool use_queue = p >= kQueueFrom;
  parallel_for(n_items(B, M), nt, [&](int64_t item, int) {
    for_tiles<T, LFB, LFO>(x, w, B, M, N, item, [&](int64_t b0, int nb, int64_t o0, int no, const T* const* xr,
                                                    const T* const* wr) {
      v acc[NJ];
      for (int j = 0; j < NJ; ++j) acc[j] = splat<T>(0);
      int64_t i = 0;
      for (; i + L <= N; i += L)  // pass 1: the maximum of each pair
        for (int r = 0; r < LFB; ++r) {
          const v xv = load(xr[r] + i);
          for (int c = 0; c < LFO; ++c) acc[r * LFO + c] = vmax<T>(acc[r * LFO + c], vabs<T>(xv - load(wr[c] + i)));
        }
      T mx[NJ], inv[NJ];
      for (int r = 0; r < LFB; ++r)
        for (int c = 0; c < LFO; ++c) {
          T m = hmax_v<T>(acc[r * LFO + c]);
          for (int64_t j = i; j < N; ++j) m = std::max(m, std::fabs(xr[r][j] - wr[c][j]));
          mx[r * LFO + c] = m;
          inv[r * LFO + c] = m > 0 ? T(1) / m : T(0);
          acc[r * LFO + c] = splat<T>(0);
        }
      v base[NJ], t[NJ];
      PowQueue<T, NJ> q;
      v qacc[NJ];  // sums of the queued terms, per tile slot
      for (int j = 0; j < NJ; ++j) qacc[j] = splat<T>(0);
      auto power_queue_head = [&]() {
        tile_pow<T, NJ>(t, q.val, p);
        for (int k = 0; k < NJ; ++k) qacc[q.slot[k]] += t[k];
        q.pop();
      };
      for (i = 0; i + L <= N; i += L) {  // pass 2: sum of (d / m)^p
        for (int r = 0; r < LFB; ++r) {
          const v xv = load(xr[r] + i);
          for (int c = 0; c < LFO; ++c) base[r * LFO + c] = vabs<T>(xv - load(wr[c] + i)) * inv[r * LFO + c];
        }
        if (tskip > 0) {  // negligible terms add nothing a T can hold (see skip_below)
          if (all_below<T, NJ>(base, tv)) continue;
          const uint32_t act = use_queue ? active_vectors<T, NJ>(base, tv) : ~0u;
          if (__builtin_popcount(act) <= NJ / 2) {
            q.push(base, act, i);
            if (q.n >= NJ) power_queue_head();
            continue;
          }
        }
        tile_pow<T, NJ>(t, base, p);
        for (int j = 0; j < NJ; ++j) acc[j] += t[j];
      }
      if (q.n > 0) {
        q.pad();
        power_queue_head();
      }
      for (int j = 0; j < NJ; ++j) acc[j] += qacc[j];
      for (int r = 0; r < nb; ++r)
        for (int c = 0; c < no; ++c) {
          const int j = r * LFO + c;
          T sum = hsum<T>(acc[j]);
          for (int64_t k = i; k < N; ++k) sum += spow<T>(std::fabs(xr[r][k] - wr[c][k]) * inv[j], p);
          y[(b0 + r) * M + o0 + c] = mx[j] > 0 ? mx[j] * std::pow(sum, T(1) / T(p)) : T(0);
        }
    });
  });
}

// d/dx_i ||x - w||_p = sign(x_i - w_i) (|x_i - w_i| / y)^(p - 1)  (0 where y = 0, and where
// x_i = w_i for p = 1).  gx, gw zero-initialised by the caller (either may be null).  gx is
// accumulated in per-thread buffers (scratch: nt x B x N) and summed at the end.
template <typename T>
void lp_backward(const T* x, const T* w, const T* y, const T* g, int64_t B, int64_t M, int64_t N, int64_t p,
                 T* gx, T* gw, T* scratch, int skip, int nt) {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vi vi;
  constexpr int L = lanes<T>();
  constexpr int NJ = LBB * LBO;
  const T tskip = p > 1 ? skip_below<T>(N, p - 1, skip) : T(0);
  const v tv = splat<T>(tskip);
  const bool use_queue = p - 1 >= kQueueFrom;
  const int64_t items = n_items(B, M);
  const int ntu = (int)std::min<int64_t>(std::max(1, nt), items);
  if (gx) std::memset(scratch, 0, sizeof(T) * (size_t)ntu * B * N);
  // gw rows of an o block are shared by all b blocks, so one thread takes all b blocks of an o block
  const int64_t n_bb = (B + BB - 1) / BB, n_ob = (M + OB - 1) / OB;
  parallel_for(n_ob, ntu, [&](int64_t ob, int tid) {
    T* gxt = gx ? scratch + (size_t)tid * B * N : nullptr;
    for (int64_t bb = 0; bb < n_bb; ++bb) {
      const int64_t item = bb * n_ob + ob;
      for_tiles<T, LBB, LBO>(x, w, B, M, N, item, [&](int64_t b0, int nb, int64_t o0, int no, const T* const* xr,
                                                      const T* const* wr) {
        T sc[NJ], inv[NJ];  // g / 0 and 1 / y per pair (0 for clamped copies and y = 0)
        for (int r = 0; r < LBB; ++r)
          for (int c = 0; c < LBO; ++c) {
            const int64_t bo = (b0 + std::min(r, nb - 1)) * M + o0 + std::min(c, no - 1);
            const T yy = y[bo];
            inv[r * LBO + c] = yy > 0 ? T(1) / yy : T(0);
            sc[r * LBO + c] = (r < nb && c < no && yy > 0) ? g[bo] : T(0);
          }
        const vi signmask = (vi)splat<T>(T(-0.0));
        v base[NJ], t[NJ];
        PowQueue<T, NJ> q;
        auto power_queue_head = [&]() {  // sign(d) (|d| / y)^(p-1) g for NJ queued vectors
          v mag[NJ];
          for (int k = 0; k < NJ; ++k) mag[k] = vabs<T>(q.val[k]);
          tile_pow<T, NJ>(t, mag, p - 1);
          for (int k = 0; k < NJ; ++k) {
            const int j = q.slot[k], r = j / LBO, c = j % LBO;
            const v tt = (v)((vi)t[k] | ((vi)q.val[k] & signmask)) * sc[j];
            if (gxt && r < nb) store(gxt + (b0 + r) * N + q.step[k], load(gxt + (b0 + r) * N + q.step[k]) + tt);
            if (gw && c < no) store(gw + (o0 + c) * N + q.step[k], load(gw + (o0 + c) * N + q.step[k]) - tt);
          }
          q.pop();
        };
        int64_t i = 0;
        for (; i + L <= N; i += L) {
          v xv[LBB], wv[LBO];
          for (int r = 0; r < LBB; ++r) xv[r] = load(xr[r] + i);
          for (int c = 0; c < LBO; ++c) wv[c] = load(wr[c] + i);
          for (int r = 0; r < LBB; ++r)
            for (int c = 0; c < LBO; ++c) base[r * LBO + c] = vabs<T>(xv[r] - wv[c]) * inv[r * LBO + c];
          if (p == 1) {
            for (int j = 0; j < NJ; ++j) t[j] = (v)((vi)(base[j] > splat<T>(0)) & (vi)splat<T>(1));
          } else {
            if (tskip > 0) {  // negligible gradient terms (see skip_below) add nothing
              if (all_below<T, NJ>(base, tv)) continue;
              const uint32_t act = use_queue ? active_vectors<T, NJ>(base, tv) : ~0u;
              if (__builtin_popcount(act) <= NJ / 2) {  // queue signed ratios d / y
                for (int r = 0; r < LBB; ++r)
                  for (int c = 0; c < LBO; ++c) base[r * LBO + c] = (xv[r] - wv[c]) * inv[r * LBO + c];
                q.push(base, act, i);
                if (q.n >= NJ) power_queue_head();
                continue;
              }
            }
            tile_pow<T, NJ>(t, base, p - 1);
          }
          v gxa[LBB];
          for (int r = 0; r < LBB; ++r) gxa[r] = splat<T>(0);
          for (int c = 0; c < LBO; ++c) {
            v gwa = splat<T>(0);
            for (int r = 0; r < LBB; ++r) {  // sign(d) (|d| / y)^(p-1) g
              const int j = r * LBO + c;
              const v tt = (v)((vi)t[j] | ((vi)(xv[r] - wv[c]) & signmask)) * sc[j];
              gxa[r] += tt;
              gwa += tt;
            }
            if (gw && c < no) store(gw + (o0 + c) * N + i, load(gw + (o0 + c) * N + i) - gwa);
          }
          if (gxt)
            for (int r = 0; r < nb; ++r) store(gxt + (b0 + r) * N + i, load(gxt + (b0 + r) * N + i) + gxa[r]);
        }
        if (q.n > 0) {
          q.pad();
          power_queue_head();
        }
        for (; i < N; ++i)
          for (int r = 0; r < nb; ++r)
            for (int c = 0; c < no; ++c) {
              const int j = r * LBO + c;
              const T d = xr[r][i] - wr[c][i];
              const T a = std::fabs(d);
              T tt = p == 1 ? (a > 0 ? T(1) : T(0)) : spow<T>(a * inv[j], p - 1);
              tt = std::copysign(tt, d) * sc[j];
              if (gxt) gxt[(b0 + r) * N + i] += tt;
              if (gw) gw[(o0 + c) * N + i] -= tt;
            }
      });
    }
  });
  if (gx) {
    parallel_for(B, nt, [&](int64_t b, int) {
      for (int t = 0; t < ntu; ++t) {
        const T* src = scratch + (size_t)t * B * N + b * N;
        for (int64_t i = 0; i < N; ++i) gx[b * N + i] += src[i];
      }
    });
  }
}

// 1 if all n values are finite (no NaN, no infinity), else 0.
template <typename T> int all_finite(const T* a, int64_t n, int nt) {
  constexpr int64_t CB = 1 << 16;
  std::atomic<int> bad(0);
  parallel_for((n + CB - 1) / CB, nt, [&](int64_t item, int) {
    const int64_t lo = item * CB, hi = std::min(n, lo + CB);
    // non-finite <=> all exponent bits set
    typedef typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type U;
    const U expo = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
    U hit = 0;
    for (int64_t i = lo; i < hi; ++i) {
      U bits;
      std::memcpy(&bits, a + i, sizeof(T));
      hit |= U((bits & expo) == expo);
    }
    if (hit) bad.store(1);
  });
  return bad.load() ? 0 : 1;
}

}  // namespace

// ----------------------------------------------------------------------------- C ABI

#define LK_EXPORT extern "C" __attribute__((visibility("default")))

LK_EXPORT int lk_abi_version() { return 4; }
LK_EXPORT int lk_vector_bytes() { return LK_VBYTES; }

#define LK_DEFINE(T, SUF)                                                                             \
  LK_EXPORT int lk_all_finite_##SUF(const T* a, int64_t n, int nt) { return all_finite<T>(a, n, nt); }  \
  LK_EXPORT void lk_linf_forward_##SUF(const T* x, const T* w, int64_t B, int64_t M, int64_t N,          \
                                       const int64_t* cols, int64_t NK, T* y,                          \
                                       int32_t* code, int nt) {                                       \
    linf_forward<T>(x, w, B, M, N, cols, NK, y, code, nt);                                            \
  }                                                                                                   \
  LK_EXPORT void lk_scatter_backward_##SUF(const T* g, const int32_t* code, const T* coef, int64_t B,    \
                                           int64_t M, int64_t N, int64_t K, T* gx, T* gw, int nt) {   \
    scatter_backward<T>(g, code, coef, B, M, N, K, gx, gw, nt);                                       \
  }                                                                                                   \
  LK_EXPORT void lk_topk_forward_##SUF(const T* x, const T* w, const T* coef, int64_t B, int64_t M,      \
                                       int64_t N, int64_t K, T* y, int32_t* code, int nt) {           \
    topk_forward<T>(x, w, coef, B, M, N, K, y, code, nt);                                             \
  }                                                                                                   \
  LK_EXPORT void lk_lp_forward_##SUF(const T* x, const T* w, int64_t B, int64_t M, int64_t N, int64_t p, \
                                     T* y, int skip, int nt) {                                        \
    lp_forward<T>(x, w, B, M, N, p, y, skip, nt);                                                     \
  }                                                                                                   \
  LK_EXPORT void lk_lp_backward_##SUF(const T* x, const T* w, const T* y, const T* g, int64_t B,         \
                                      int64_t M, int64_t N, int64_t p, T* gx, T* gw, T* scratch,      \
                                      int skip, int nt) {                                             \
    lp_backward<T>(x, w, y, g, B, M, N, p, gx, gw, scratch, skip, nt);                                \
  }

LK_DEFINE(float, f32)
LK_DEFINE(double, f64)
