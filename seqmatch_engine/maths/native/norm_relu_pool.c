/* The ConvNet block avg_pool2(relu(instance_norm(z) * gamma + beta)) and its first and second
 * derivatives, fp32, one (sample, channel) plane per loop iteration.
 *
 * Each plane is worked through by one thread in a fixed order, and per-plane partial sums over
 * the batch are added in plane order at the end, so results do not depend on the number of
 * threads. The maths is that of models._NormReLUPoolGrad (its docstring has the formulas); with
 * S = H*W, r = 1/std, zh = (z - mean) r and d = the gradient at the norm output:
 *   forward      out = pool(max(0, gamma zh + beta))
 *   backward     dz = gamma r (d - mean(d) - zh mean(d zh)),  dgamma = sum d zh,  dbeta = sum d
 *   double       the vector-Jacobian product of the backward.
 * A dropped odd last row/column (floor pooling) gets d = 0 and no pooled gradient.
 * Loops over a plane are written so that the compiler vectorises them: sums keep LANES partial
 * sums (no reassociation needed), the per-plane scratch rows live in two buffers per thread.
 * Built and loaded by native/__init__.py; every pointer is to contiguous memory. Functions
 * return 0, or 1 when scratch memory could not be allocated.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define LANES 8

typedef struct {
    int64_t batch, channels, height, width;
} Shape;

static double sum(const float *a, int64_t n) {
    float acc[LANES] = {0};
    int64_t k = 0;
    for (; k + LANES <= n; k += LANES)
        for (int l = 0; l < LANES; ++l) acc[l] += a[k + l];
    double total = 0.0;
    for (int l = 0; l < LANES; ++l) total += acc[l];
    for (; k < n; ++k) total += a[k];
    return total;
}

static double dot(const float *a, const float *b, int64_t n) {
    float acc[LANES] = {0};
    int64_t k = 0;
    for (; k + LANES <= n; k += LANES)
        for (int l = 0; l < LANES; ++l) acc[l] += a[k + l] * b[k + l];
    double total = 0.0;
    for (int l = 0; l < LANES; ++l) total += acc[l];
    for (; k < n; ++k) total += a[k] * b[k];
    return total;
}

/* zh = (z - mean) * r over a plane of n values. */
static void normalise(const float *restrict z, float mean, float r, int64_t n, float *restrict zh) {
    for (int64_t k = 0; k < n; ++k) zh[k] = (z[k] - mean) * r;
}

/* d (H, W): the pooled gradient (H/2, W/2) / 4 copied to its 2x2 block where relu > 0, else 0. */
static void unpool_masked(const float *restrict grad, const float *restrict relu, Shape s, float *restrict d) {
    const int64_t ph = s.height / 2, pw = s.width / 2;
    for (int64_t i = 0; i < s.height; ++i) {
        float *row = d + i * s.width;
        const float *mask = relu + i * s.width;
        if (i / 2 >= ph) {
            for (int64_t j = 0; j < s.width; ++j) row[j] = 0.0f;
            continue;
        }
        const float *g = grad + (i / 2) * pw;
        for (int64_t j = 0; j < pw; ++j) {
            const float v = g[j] * 0.25f;
            row[2 * j] = mask[2 * j] > 0.0f ? v : 0.0f;
            row[2 * j + 1] = mask[2 * j + 1] > 0.0f ? v : 0.0f;
        }
        for (int64_t j = 2 * pw; j < s.width; ++j) row[j] = 0.0f;
    }
}

/* The two rows every derivative of plane p starts from: zh (normalised input) and d (gradient at
 * the norm output). */
static void plane_zh_and_d(const float *grad, const float *z, const float *mean, const float *rstd,
                           const float *relu, Shape s, int64_t p, float *restrict zh, float *restrict d) {
    const int64_t area = s.height * s.width, pooled = (s.height / 2) * (s.width / 2);
    normalise(z + p * area, mean[p], rstd[p], area, zh);
    unpool_masked(grad + p * pooled, relu + p * area, s, d);
}

/* out (H/2, W/2) = 2x2 means of x (H, W), summed as pool2 does: ((x00 + x10) + (x01 + x11)) / 4. */
static void pool(const float *restrict x, Shape s, float *restrict out) {
    const int64_t ph = s.height / 2, pw = s.width / 2;
    for (int64_t i = 0; i < ph; ++i) {
        const float *top = x + 2 * i * s.width, *bottom = top + s.width;
        for (int64_t j = 0; j < pw; ++j)
            out[i * pw + j] = ((top[2 * j] + bottom[2 * j]) + (top[2 * j + 1] + bottom[2 * j + 1])) * 0.25f;
    }
}

/* out = a * x + b * y + shift over n values. */
static void axpby_shift(const float *restrict x, float a, const float *restrict y, float b, float shift,
                        int64_t n, float *restrict out) {
    for (int64_t k = 0; k < n; ++k) out[k] = x[k] * a + y[k] * b + shift;
}

/* out += a * x over n values. */
static void axpy(const float *restrict x, float a, int64_t n, float *restrict out) {
    for (int64_t k = 0; k < n; ++k) out[k] += x[k] * a;
}

/* x = 0 where relu <= 0. */
static void mask(const float *restrict relu, int64_t n, float *restrict x) {
    for (int64_t k = 0; k < n; ++k) x[k] = relu[k] > 0.0f ? x[k] : 0.0f;
}

/* Sums over planes of the same channel, in plane order: parts (B*C,) -> total (C,). */
static void sum_over_batch(const double *parts, Shape s, float *total) {
    for (int64_t c = 0; c < s.channels; ++c) {
        double acc = 0.0;
        for (int64_t b = 0; b < s.batch; ++b) acc += parts[b * s.channels + c];
        total[c] = (float)acc;
    }
}

int nrp_forward(const float *z, const float *gamma, const float *beta, float eps, Shape s,
                float *mean_out, float *rstd_out, float *relu, float *out, int threads) {
    const int64_t planes = s.batch * s.channels, area = s.height * s.width;
    const int64_t pooled = (s.height / 2) * (s.width / 2);
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *centred = malloc(area * sizeof(float));
        if (!centred) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < planes; ++p) {
            if (!centred) continue;
            const float *zp = z + p * area;
            float *rp = relu + p * area;
            const float mean = (float)(sum(zp, area) / area);
            normalise(zp, mean, 1.0f, area, centred);
            const float rstd = (float)(1.0 / sqrt(dot(centred, centred, area) / area + eps));
            const int64_t c = p % s.channels;
            const float scale = gamma[c] * rstd, shift = beta[c];
            for (int64_t k = 0; k < area; ++k) {
                const float v = centred[k] * scale + shift;
                rp[k] = v > 0.0f ? v : 0.0f;
            }
            pool(rp, s, out + p * pooled);
            mean_out[p] = mean;
            rstd_out[p] = rstd;
        }
        free(centred);
    }
    return failed;
}

int nrp_backward(const float *grad, const float *z, const float *gamma, const float *mean,
                 const float *rstd, const float *relu, Shape s, float *dz,
                 double *dgamma_parts, double *dbeta_parts, float *dgamma, float *dbeta, int threads) {
    const int64_t planes = s.batch * s.channels, area = s.height * s.width;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *zh = malloc(2 * area * sizeof(float)), *d = zh + area;
        if (!zh) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < planes; ++p) {
            if (!zh) continue;
            const float r = rstd[p];
            plane_zh_and_d(grad, z, mean, rstd, relu, s, p, zh, d);
            const double sd = sum(d, area), sdz = dot(d, zh, area);
            const float gr = gamma[p % s.channels] * r;
            const float m1 = (float)(sd / area), m2 = (float)(sdz / area);
            float *dzp = dz + p * area;
            for (int64_t k = 0; k < area; ++k) dzp[k] = gr * (d[k] - m1 - zh[k] * m2);
            dgamma_parts[p] = sdz;
            dbeta_parts[p] = sd;
        }
        free(zh);
    }
    if (failed) return 1;
    sum_over_batch(dgamma_parts, s, dgamma);
    sum_over_batch(dbeta_parts, s, dbeta);
    return 0;
}

/* gdz may be NULL (zero), gdgamma and gdbeta may be NULL (zero). */
int nrp_double_backward(const float *grad, const float *z, const float *gamma, const float *mean,
                        const float *rstd, const float *relu, const float *gdz, const float *gdgamma,
                        const float *gdbeta, Shape s, float *g_grad, float *g_z, double *g_gamma_parts,
                        float *g_gamma, int threads) {
    const int64_t planes = s.batch * s.channels, area = s.height * s.width;
    const int64_t pooled = (s.height / 2) * (s.width / 2);
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *zh = malloc(2 * area * sizeof(float)), *d = zh + area;
        if (!zh) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < planes; ++p) {
            if (!zh) continue;
            const int64_t c = p % s.channels;
            const float *rp = relu + p * area, *gzp = gdz ? gdz + p * area : NULL;
            float *gzo = g_z + p * area;
            const float r = rstd[p];
            plane_zh_and_d(grad, z, mean, rstd, relu, s, p, zh, d);
            const float m1 = (float)(sum(d, area) / area), m2 = (float)(dot(d, zh, area) / area);
            float mg = 0.0f, mgz = 0.0f, mgd = 0.0f;
            if (gzp) {
                mg = (float)(sum(gzp, area) / area);
                mgz = (float)(dot(gzp, zh, area) / area);
                mgd = (float)(dot(gzp, d, area) / area);
            }
            const float gg = gdgamma ? gdgamma[c] : 0.0f, gb = gdbeta ? gdbeta[c] : 0.0f;
            const float gr = gamma[c] * r;
            /* through d: g_d = zh (gg - gr mgz) + gb - gr mg + gr gdz, then masked and pooled */
            const float qb = gg - gr * mgz, d_shift = gb - gr * mg;
            /* through zh and r: q = dL/dzh = qa gdz + qb d, rho = dL/dr */
            const float qa = -gr * m2;
            const float t = (float)area * (mgd - m1 * mg - m2 * mgz);
            const float rho = gamma[c] * t;
            const float mean_q = qa * mg + qb * m1, mean_qz = qa * mgz + qb * m2;
            const float zh_coef = -r * mean_qz - rho * r * r / (float)area, z_shift = -r * mean_q;
            const float d_coef = r * qb, gdz_coef = r * qa;
            axpby_shift(zh, zh_coef, d, d_coef, z_shift, area, gzo);
            if (gzp) axpy(gzp, gdz_coef, area, gzo);
            /* d becomes the masked gradient at the norm output */
            axpby_shift(zh, qb, gzp ? gzp : zh, gzp ? gr : 0.0f, d_shift, area, d);
            mask(rp, area, d);
            pool(d, s, g_grad + p * pooled);
            g_gamma_parts[p] = (double)r * t;
        }
        free(zh);
    }
    if (failed) return 1;
    sum_over_batch(g_gamma_parts, s, g_gamma);
    return 0;
}
