// Package fs serves virtual disk images over FUSE: a mount holds one
// directory per VM, and each directory holds that VM's image files
// (os.img, data-<lun>.img, temp.img). Every file is backed by an Image, the
// encrypted disk engine; this package only translates FUSE requests into
// Image calls. It knows nothing of keys, ciphers or the on-disk format.
//
// The tree is dynamic: the daemon adds and removes images while the mount is
// live, and every change is pushed to the kernel at once (cached entries and
// attributes are invalidated), so a file is visible as soon as AddImage
// returns and gone as soon as RemoveImage returns.
//
// Choices a user of the mount can observe, and why:
//
//   - Every open is answered with FOPEN_DIRECT_IO|FOPEN_PARALLEL_DIRECT_WRITES,
//     whether or not the caller asked for O_DIRECT. The kernel page cache would
//     be a second, plaintext copy of the disk outside the host cache that the
//     engine encrypts, and it would keep serving data after a customer key is
//     revoked. Bypassing it also lets concurrent writes to one image reach the
//     engine in parallel. The price: shared writable mmap of an image fails
//     with ENODEV (hypervisors and loop devices do not mmap their images).
//   - Images behave like block devices, which cannot grow by writing: a write
//     that starts at or beyond the end fails with ENOSPC, one that crosses the
//     end is cut short (the same as a write to /dev/sdX). Reads at or past
//     the end return 0 bytes.
//   - fallocate: PUNCH_HOLE|KEEP_SIZE discards the range; ZERO_RANGE zeroes it
//     (Zeroer when the engine has one, else Discard, which also reads back as
//     zeros); a plain allocation inside the image succeeds without doing
//     anything, because the engine allocates on write and a reservation would
//     not survive a crash anyway. Any mode that would make the file larger
//     fails with EFBIG rather than EOPNOTSUPP, because glibc's posix_fallocate
//     falls back to writing on EOPNOTSUPP. Ranges reaching past the end are
//     clamped when KEEP_SIZE is set. Other modes answer EOPNOTSUPP.
//   - Namespace changes (create, mkdir, mknod, unlink, rmdir, rename, link,
//     symlink) and attribute changes (chmod, chown, utimes, truncate to a
//     different size) fail with EPERM: the layout belongs to the daemon.
//     Truncating to the current size succeeds: tools that set the size an
//     image already has keep working.
//   - Extended attributes are disabled at the protocol level (the kernel gets
//     ENOSYS once and stops asking), so setxattr reports EOPNOTSUPP. Without
//     this every write would cost an extra GETXATTR round trip for
//     security.capability.
//   - The mount uses default_permissions, so the kernel enforces the modes
//     below. Directories are 0755 root: the names of VMs and disks are not
//     secret, and a hypervisor running under its own uid (Options.UID) must be
//     able to walk to its image. Image files are 0600, owned by Options.UID
//     and Options.GID (root by default).
//   - Errors from the engine that wrap a syscall.Errno reach the caller as that
//     errno; anything else is EIO.
//   - After RemoveImage, file descriptors still open on the image get EIO for
//     every operation (close still succeeds, and fstat shows nlink 0); the
//     Image is never called again once RemoveImage has returned. RemoveImage
//     waits for the engine calls in flight, so a call stuck in the engine
//     holds it up.
//   - A grown image (Tree.Resized) shows its new size at the next stat or
//     lseek(SEEK_END); until then the kernel may cut asynchronous direct
//     reads at the old size.
//   - Inode numbers are never reused within a mount: an image removed and
//     added again under the same name is a new file to the kernel.
package fs
