package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/mana/apigw/services/testenv/proc"
)

// startProc starts bin with the harness's environment plus env, in its own
// process group (a Ctrl-C of `make bench` reaches the harness, which stops
// its children in order), logging to dir/<name>.log.
func startProc(name, dir, bin string, env []string, args ...string) (*proc.Proc, error) {
	return proc.Start(proc.Spec{Name: name, Bin: bin, Args: args, Env: env,
		Log: filepath.Join(dir, name+".log"), OwnGroup: true})
}

// exited reports whether p has ended.
func exited(p *proc.Proc) bool {
	ended, _ := p.Exited()
	return ended
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// cpuSeconds is the user plus system CPU time a process has used.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	f, err := statFields(b)
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	// Fields after the command: state is index 0, utime is field 14 of the
	// whole line, i.e. index 11 here, stime index 12.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	return float64(ut+st) / clockTicks, nil
}

// statFields splits /proc/<pid>/stat after the command name (which may hold
// spaces and parentheses).
func statFields(b []byte) ([]string, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("malformed /proc stat line")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return nil, errors.New("short /proc stat line")
	}
	return f, nil
}

// children lists the direct children of pid (nginx's workers).
func children(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		f, err := statFields(b)
		if err != nil {
			continue
		}
		if pp, _ := strconv.Atoi(f[1]); pp == pid {
			out = append(out, n)
		}
	}
	return out
}

// groupCPU sums the CPU seconds of the pids.
func groupCPU(pids []int) float64 {
	var s float64
	for _, p := range pids {
		v, err := cpuSeconds(p)
		if err == nil {
			s += v
		}
	}
	return s
}

// memKB reads a field such as VmHWM or VmRSS (kB) of /proc/<pid>/status.
func memKB(pid int, field string) int64 { return proc.Status(pid, field) >> 10 }

// groupHWM sums the peak RSS of the pids (kB).
func groupHWM(pids []int) int64 {
	var s int64
	for _, p := range pids {
		s += memKB(p, "VmHWM")
	}
	return s
}

// resetHWM resets the peak RSS of the pids to their current RSS (Linux
// clear_refs, value 5), so that a later VmHWM is the peak of one phase.
func resetHWM(pids []int) error {
	var errs []error
	for _, p := range pids {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p), []byte("5"), 0o200); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// machineBusy is the CPU time (seconds, all cores) the machine spent outside
// idle and iowait since boot, from /proc/stat.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		if i == 3 || i == 4 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return float64(busy) / clockTicks
}
