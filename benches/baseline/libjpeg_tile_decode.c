/* libjpeg-turbo's cost per tile on the level-0 tiles of a tiled JPEG TIFF, called from C.
 *
 *   cc -O2 -o /tmp/libjpeg_tile_decode benches/baseline/libjpeg_tile_decode.c -ljpeg
 *   /tmp/libjpeg_tile_decode SLIDE [TILES]
 *
 * Needs the libjpeg-turbo headers (Debian: libjpeg62-turbo-dev). Nothing here is used by the
 * tests. Reads TILES (default 1000) seeded-random level-0 tiles of SLIDE into memory (first IFD,
 * classic TIFF or BigTIFF, little-endian; JPEGTables spliced in front when present), then times
 * per tile, median of 3 passes, with libjpeg's defaults (islow IDCT, fancy upsampling: what
 * OpenSlide uses):
 *   full      the whole tile to RGB;
 *   1/8       scale 1/8: every block is still entropy-decoded, only the DC part of the IDCT runs
 *             and 1/64 of the pixels are produced, so this is close to the entropy decoder's cost;
 *   top half  the first half of the rows, then jpeg_abort_decompress: what a decoder that stops
 *             after the last needed row saves;
 *   setup     headers, tables and jpeg_start_decompress, no rows: the fixed cost in each of
 *             the above.
 * Also prints the same for the tiles over 4 KiB (tissue; background tiles are small).
 * BENCHMARKS.md uses it to bound what a libjpeg-turbo-class decoder can do for random regions.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jpeglib.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static FILE *f;
static uint64_t rd(uint64_t off, int n) {
  unsigned char b[8] = {0};
  uint64_t v = 0;
  if (fseeko(f, (off_t)off, SEEK_SET) || fread(b, 1, n, f) != (size_t)n) {
    fprintf(stderr, "short read at %llu\n", (unsigned long long)off);
    exit(1);
  }
  for (int i = n - 1; i >= 0; i--) v = v << 8 | b[i];
  return v;
}

/* One tag of the first IFD: its type, count and where its values are. */
struct tag { int type; uint64_t count, at; };

static int type_size(int t) { return t == 3 ? 2 : t == 4 ? 4 : (t == 16 ? 8 : 1); }

static uint64_t value(struct tag t, uint64_t i) {
  return rd(t.at + i * type_size(t.type), type_size(t.type));
}

struct tiles { unsigned char **data; unsigned long *len; int n; };

/* Median of 3 passes, microseconds per tile; mode 0 full, 1 1/8 scale, 2 top half, 3 setup. */
static double time_mode(struct tiles *t, int mode) {
  unsigned char *out = malloc(4096 * 3 * 16);
  double runs[3];
  for (int pass = 0; pass < 3; pass++) {
    double t0 = now();
    for (int i = 0; i < t->n; i++) {
      struct jpeg_decompress_struct c;
      struct jpeg_error_mgr e;
      c.err = jpeg_std_error(&e);
      jpeg_create_decompress(&c);
      jpeg_mem_src(&c, t->data[i], t->len[i]);
      jpeg_read_header(&c, TRUE);
      if (mode == 1) { c.scale_num = 1; c.scale_denom = 8; }
      jpeg_start_decompress(&c);
      if (c.output_width > 4096) { fprintf(stderr, "tile too wide\n"); exit(1); }
      JDIMENSION stop = mode == 3 ? 0 : mode == 2 ? c.output_height / 2 : c.output_height;
      while (c.output_scanline < stop) {
        unsigned char *row = out;
        jpeg_read_scanlines(&c, &row, 1);
      }
      if (mode >= 2) jpeg_abort_decompress(&c); else jpeg_finish_decompress(&c);
      jpeg_destroy_decompress(&c);
    }
    runs[pass] = (now() - t0) / t->n * 1e6;
  }
  free(out);
  double a = runs[0], b = runs[1], c = runs[2];
  return a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));
}

static void report(const char *what, struct tiles *t) {
  double bytes = 0;
  for (int i = 0; i < t->n; i++) bytes += t->len[i];
  printf("%s: %d tiles, mean %.0f bytes\n", what, t->n, t->n ? bytes / t->n : 0);
  if (!t->n) return;
  const char *names[4] = {"full", "1/8", "top half", "setup"};
  for (int m = 0; m < 4; m++) printf("  %-9s %6.1f us/tile\n", names[m], time_mode(t, m));
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: %s SLIDE [TILES]\n", argv[0]); return 2; }
  int want = argc > 2 ? atoi(argv[2]) : 1000;
  if (!(f = fopen(argv[1], "rb"))) { perror(argv[1]); return 1; }
  if (rd(0, 2) != 0x4949) { fprintf(stderr, "only little-endian TIFF is handled\n"); return 1; }
  int big = rd(2, 2) == 43;
  uint64_t ifd = big ? rd(8, 8) : rd(4, 4);
  uint64_t n = big ? rd(ifd, 8) : rd(ifd, 2);
  int esize = big ? 20 : 12;
  struct tag offsets = {0}, counts = {0}, tables = {0}, comp = {0};
  for (uint64_t i = 0; i < n; i++) {
    uint64_t e = ifd + (big ? 8 : 2) + i * esize;
    struct tag t = {(int)rd(e + 2, 2), big ? rd(e + 4, 8) : rd(e + 4, 4), 0};
    uint64_t inline_at = e + (big ? 12 : 8);
    t.at = t.count * type_size(t.type) > (uint64_t)(big ? 8 : 4) ? rd(inline_at, big ? 8 : 4)
                                                                : inline_at;
    switch (rd(e, 2)) {
      case 259: comp = t; break;
      case 324: offsets = t; break;
      case 325: counts = t; break;
      case 347: tables = t; break;
    }
  }
  if (!comp.count || value(comp, 0) != 7 || !offsets.count || offsets.count != counts.count) {
    fprintf(stderr, "level 0 is not a tiled JPEG\n");
    return 1;
  }
  unsigned char *tab = NULL;
  unsigned long tab_len = 0;
  if (tables.count >= 4) {
    tab_len = tables.count - 2; /* without its EOI */
    tab = malloc(tab_len);
    for (unsigned long i = 0; i < tab_len; i++) tab[i] = (unsigned char)rd(tables.at + i, 1);
  }
  struct tiles all = {calloc(want, sizeof(void *)), calloc(want, sizeof(long)), 0};
  struct tiles tissue = {calloc(want, sizeof(void *)), calloc(want, sizeof(long)), 0};
  srand(42);
  for (int k = 0; k < want; k++) {
    uint64_t i = ((uint64_t)rand() * RAND_MAX + rand()) % offsets.count;
    uint64_t off = value(offsets, i), len = value(counts, i);
    if (len < 4 || len > (64u << 20)) { k--; continue; }
    unsigned long total = tab ? tab_len + len - 2 : len;
    unsigned char *d = malloc(total);
    if (tab) memcpy(d, tab, tab_len);
    if (fseeko(f, (off_t)(off + (tab ? 2 : 0)), SEEK_SET) ||
        fread(d + (tab ? tab_len : 0), 1, total - (tab ? tab_len : 0), f) != total - (tab ? tab_len : 0)) {
      fprintf(stderr, "short tile read\n");
      return 1;
    }
    all.data[all.n] = d; all.len[all.n++] = total;
    if (len > 4096) { tissue.data[tissue.n] = d; tissue.len[tissue.n++] = total; }
  }
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
  printf("%s; headers of libjpeg-turbo %d\n", argv[1], LIBJPEG_TURBO_VERSION_NUMBER);
#else
  printf("%s; libjpeg headers of API version %d\n", argv[1], JPEG_LIB_VERSION);
#endif
  report("seeded-random level-0 tiles", &all);
  report("of which over 4 KiB (tissue)", &tissue);
  return 0;
}
