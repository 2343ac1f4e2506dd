package cli

// commands lists every command of the CLI, one group after another.
func commands() []Command {
	var all []Command
	all = append(all, diskCommands()...)
	all = append(all, vmCommands()...)
	return all
}
