// Package kmod loads kernel modules, with their dependencies, the way
// modprobe does but without it: nftvs's image has no kmod, and
// github.com/moby/ipvs only execs `modprobe -va ip_vs` and warns when that
// fails. It reads the module tree of the running kernel
// (/lib/modules/$(uname -r): modules.dep, modules.builtin,
// modules.softdep, modules.alias) and calls finit_module(2) on each file.
//
// It owns nothing but that: it never unloads a module, never passes
// module parameters, and reads nothing outside the module tree and
// /sys/module. Loading needs CAP_SYS_MODULE in the host's user namespace.
package kmod
