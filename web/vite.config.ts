import { defineConfig } from "vite";

// The console is embedded in concord's binary (web/embed.go) and served under
// /console/; relative asset URLs keep it working under any prefix.
export default defineConfig({
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // One small bundle: no source maps or legacy chunks in the binary.
    sourcemap: false,
    target: "es2022",
  },
});
