//! Where the server's threads run and which thread takes a new connection.
//!
//! With [`Placement::plan`] on (`ServerConfig::pin_threads`, the default) and at least two
//! threads, no more than the CPUs this process may use, thread `i` is pinned to the `i`-th
//! allowed CPU and every listening group gets a classic-BPF `SO_REUSEPORT` program that
//! hands a new connection to the thread pinned on the CPU its SYN was processed on (the
//! "incoming CPU"); a SYN on any other CPU falls back to the kernel's hash.
//!
//! Why: a request's wakeups then stay on one CPU. Over a real network the incoming CPU is
//! the one the NIC's receive queue interrupts (RSS), so the thread that serves a connection
//! runs where its packets are processed. On one machine (loopback, the VM lab) it is the
//! CPU of the host's queue thread, which the ublk driver pins to the CPUs of its hardware
//! queue: submission, the server's work and the completion then run on one CPU without an
//! inter-processor wakeup. Measured on this project's 2-CPU machine, 4k reads at queue
//! depth 1 over loopback ran about 5x faster with client and server thread on one CPU
//! than on two (see README, "Latency at queue depth 1"). Without pinning, the reuseport
//! hash puts a lane on any thread and the scheduler on any CPU.

use std::io;
use std::os::fd::AsRawFd;

use crate::error::{Error, Result};

/// `SKF_AD_OFF + SKF_AD_CPU`: the classic-BPF ancillary load of the current CPU.
const LOAD_CPU: u32 = (-0x1000i32 + 36) as u32;
/// `BPF_LD | BPF_W | BPF_ABS`.
const BPF_LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const BPF_JEQ_K: u16 = 0x15;
/// `BPF_RET | BPF_K`.
const BPF_RET_K: u16 = 0x06;

/// Where each server thread runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The CPU each thread is pinned to (thread `i` on `cpus[i]`); empty: not pinned, no
    /// steering.
    pub cpus: Vec<usize>,
    /// Every CPU the process may use: where the threads run when let go (`net/spread.rs`).
    pub allowed: Vec<usize>,
}

impl Placement {
    /// The placement of `threads` threads on the `allowed` CPUs: pinned one per CPU when
    /// `pin` and `2 <= threads <= allowed.len()`, else none (one thread, or more threads
    /// than CPUs, is left to the scheduler).
    pub fn plan(pin: bool, threads: usize, allowed: &[usize]) -> Placement {
        let cpus = if pin && threads >= 2 && threads <= allowed.len() {
            allowed[..threads].to_vec()
        } else {
            Vec::new()
        };
        Placement {
            cpus,
            allowed: allowed.to_vec(),
        }
    }

    /// Whether threads are pinned and connections steered.
    pub fn is_pinned(&self) -> bool {
        !self.cpus.is_empty()
    }

    /// Pins the calling thread to thread `index`'s CPU (nothing when not pinned).
    pub fn pin_current_thread(&self, index: usize) -> Result<()> {
        self.set_thread_pinned(index, CALLING_THREAD, true)
    }

    /// Pins thread `index` (kernel thread id `tid`) to its CPU, or lets it run on every
    /// allowed CPU (`pinned == false`); nothing when not pinned.
    pub fn set_thread_pinned(&self, index: usize, tid: libc::pid_t, pinned: bool) -> Result<()> {
        let Some(&cpu) = self.cpus.get(index) else {
            return Ok(());
        };
        let (cpus, what) = if pinned {
            (
                std::slice::from_ref(&cpu),
                format!("pinning server thread {index} to CPU {cpu}"),
            )
        } else {
            let cpus = &self.allowed[..];
            (
                cpus,
                format!("letting server thread {index} run on CPUs {cpus:?}"),
            )
        };
        set_affinity(tid, cpus).map_err(|e| Error::io(what, e))
    }

    /// Attaches the steering program to the reuseport group of `listener` (any member of
    /// the group; the program applies to the whole group, whose member `i` is thread
    /// `i`'s socket). Nothing when not pinned.
    pub fn steer(&self, listener: &impl AsRawFd) -> Result<()> {
        if !self.is_pinned() {
            return Ok(());
        }
        let mut program = steering_program(&self.cpus);
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_mut_ptr(),
        };
        // SAFETY: `fprog` points at `program`, alive for the call; the kernel copies it.
        let done = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_REUSEPORT_CBPF,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if done != 0 {
            let error = io::Error::last_os_error();
            return Err(Error::io(
                "attaching the connection steering program",
                error,
            ));
        }
        Ok(())
    }
}

/// The thread id `sched_setaffinity` takes for the calling thread.
const CALLING_THREAD: libc::pid_t = 0;

/// Lets thread `tid` run on `cpus` only.
fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_ZERO/CPU_SET write inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `set` is a live cpu_set_t and `cpu` is below CPU_SETSIZE (it came from
        // sched_getaffinity's own set).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: passes a live set of the size given.
    let done = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's id of the calling thread (for [`Placement::set_thread_pinned`]).
pub fn current_thread_id() -> libc::pid_t {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// The CPUs the calling thread may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain old data; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes a live set of the size given; pid 0 is the calling thread.
    let done = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if done != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `set` is initialised and `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// `A = cpu; if A == cpus[0] return 0; ...; return cpus.len()` (an index past the group,
/// which makes the kernel fall back to its hash).
fn steering_program(cpus: &[usize]) -> Vec<libc::sock_filter> {
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut program = vec![op(BPF_LD_W_ABS, 0, 0, LOAD_CPU)];
    for (index, &cpu) in cpus.iter().enumerate() {
        // Equal: fall through to the `ret`; else skip it.
        program.push(op(BPF_JEQ_K, 0, 1, cpu as u32));
        program.push(op(BPF_RET_K, 0, 0, index as u32));
    }
    program.push(op(BPF_RET_K, 0, 0, cpus.len() as u32));
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_only_between_two_threads_and_the_cpu_count() {
        let allowed = [0, 1, 4, 5];
        assert_eq!(Placement::plan(true, 2, &allowed).cpus, vec![0, 1]);
        assert_eq!(Placement::plan(true, 4, &allowed).cpus, vec![0, 1, 4, 5]);
        assert!(!Placement::plan(true, 1, &allowed).is_pinned());
        assert!(!Placement::plan(true, 5, &allowed).is_pinned());
        assert!(!Placement::plan(false, 4, &allowed).is_pinned());
    }

    /// Runs the program the way the kernel's classic-BPF interpreter would, for the
    /// instructions it uses.
    fn run(program: &[libc::sock_filter], cpu: u32) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let insn = program[pc];
            match insn.code {
                BPF_LD_W_ABS if insn.k == LOAD_CPU => a = cpu,
                BPF_JEQ_K => {
                    pc += usize::from(if a == insn.k { insn.jt } else { insn.jf });
                }
                BPF_RET_K => return insn.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn the_program_picks_the_thread_on_the_incoming_cpu() {
        let program = steering_program(&[2, 3, 6]);
        assert_eq!(run(&program, 2), 0);
        assert_eq!(run(&program, 3), 1);
        assert_eq!(run(&program, 6), 2);
        // Another CPU: past the group, so the kernel hashes.
        assert_eq!(run(&program, 0), 3);
    }

    #[test]
    fn the_kernel_accepts_the_program_on_a_reuseport_listener() {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_reuse_port(true).expect("SO_REUSEPORT");
        socket
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        socket.listen(8).expect("listen");
        let placement = Placement::plan(true, 2, &[0, 1]);
        placement.steer(&socket).expect("SO_ATTACH_REUSEPORT_CBPF");
    }
}
