# a package, so these test modules get unique names and can import each other's helpers
