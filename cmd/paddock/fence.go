package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/fence"
)

// fenceCmd is the parent of every fencing command. The commands here need
// no daemon: they run a fence agent once, to test a device's parameters
// before it goes into the cluster configuration.
var fenceCmd = &cobra.Command{
	Use:   "fence",
	Short: "Fence agents and devices",
	Long: `Fencing makes sure a lost node can no longer touch its volumes before
another node takes them over. "agent-test" and "agent-metadata" run a
ClusterLabs fence agent (Debian's fence-agents package) directly, without a
daemon, to try a device's parameters. "device", "level" and "settings" put
devices and per-node levels into the cluster configuration; the survivors
of a node loss then fence it before they promote replicas of its volumes
(or, without levels, wait out its self-fence lease). "node" fences by hand,
"test" asks a configured device for the power status, "show" prints the
configuration and the fence history.`,
}

func init() {
	fenceCmd.AddCommand(fenceAgentTestCmd(), fenceAgentMetadataCmd())
	rootCmd.AddCommand(fenceCmd)
}

// agentTestReport is what `fence agent-test --json` prints: the run and,
// when it failed, why. It holds no secret (AgentResult is redacted).
type agentTestReport struct {
	fence.AgentResult
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func fenceAgentTestCmd() *cobra.Command {
	var (
		agent     string
		params    []string
		envParams []string
		action    string
		timeoutMs int64
		asJSON    bool
	)
	cmd := &cobra.Command{
		Use:   "agent-test --agent NAME [--param KEY=VALUE ...] [--action status]",
		Short: "Run one fence agent once and print what it said",
		Long: `Runs a fence agent once with the fence-agents stdin protocol and prints the
exit code, the power state (for status), the duration and the agent's output.
Passwords are never printed. To keep a password off the command line (and out
of ps), put it in an environment variable and pass --param-env password=VAR.

Actions: status (default), monitor, on, off, reboot. "off" is only the agent's
off; the daemon additionally checks that a following status says off.

Exit status: 0 when the agent succeeded (status: on or off), 1 otherwise.`,
		Example: `  paddock fence agent-test --agent fence_dummy --param status_file=/tmp/pwr
  paddock fence agent-test --agent fence_ipmilan --param ip=10.0.0.21 \
      --param username=admin --param-env password=IPMI_PW --param lanplus=1 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			act := fence.Action(action)
			switch act {
			case fence.ActionStatus, fence.ActionMonitor, fence.ActionOn, fence.ActionOff, fence.ActionReboot:
			default:
				return fmt.Errorf("--action %q: want status, monitor, on, off or reboot", action)
			}
			kv, err := parseParams(params, envParams)
			if err != nil {
				return err
			}
			dev := fence.NewDevice("agent-test", agent, kv)
			dev.TimeoutMs = timeoutMs
			if err := dev.Validate(); err != nil {
				return err
			}
			r := &fence.AgentRunner{}
			res, runErr := r.Run(cmd.Context(), dev, act)
			return printAgentTest(cmd.OutOrStdout(), res, runErr, asJSON)
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "fence agent program: a name (fence_ipmilan) or an absolute path")
	cmd.Flags().StringArrayVar(&params, "param", nil, "agent parameter KEY=VALUE (repeatable)")
	cmd.Flags().StringArrayVar(&envParams, "param-env", nil, "agent parameter KEY=ENVVAR, the value read from the environment variable (repeatable)")
	cmd.Flags().StringVar(&action, "action", "status", "action: status, monitor, on, off, reboot")
	cmd.Flags().Int64Var(&timeoutMs, "timeout-ms", 60_000, "kill the agent (and what it started) after this many milliseconds")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.MarkFlagRequired("agent")
	return cmd
}

// Limits on command-line parameters (the device limits apply as well).
const maxCLIParams = 64

// parseParams reads KEY=VALUE flags and KEY=ENVVAR flags into one map.
func parseParams(params, envParams []string) (map[string]string, error) {
	if len(params)+len(envParams) > maxCLIParams {
		return nil, fmt.Errorf("%d parameters, at most %d", len(params)+len(envParams), maxCLIParams)
	}
	kv := map[string]string{}
	for _, p := range params {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--param %q: want KEY=VALUE", redactFlag(p))
		}
		kv[k] = v
	}
	for _, p := range envParams {
		k, env, ok := strings.Cut(p, "=")
		if !ok || k == "" || env == "" {
			return nil, fmt.Errorf("--param-env %q: want KEY=ENVVAR", p)
		}
		v, found := os.LookupEnv(env)
		if !found {
			return nil, fmt.Errorf("--param-env %s: environment variable %s is not set", k, env)
		}
		kv[k] = v
	}
	return kv, nil
}

// redactFlag hides the value of a malformed --param whose key looks secret.
func redactFlag(p string) string {
	if fence.IsSecretParam(p) {
		k, _, _ := strings.Cut(p, "=")
		return k + "=[redacted]"
	}
	return p
}

func printAgentTest(w io.Writer, res fence.AgentResult, runErr error, asJSON bool) error {
	rep := agentTestReport{AgentResult: res, OK: runErr == nil}
	if runErr != nil {
		rep.Error = runErr.Error()
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
		if runErr != nil {
			return &exitError{code: 1, err: runErr}
		}
		return nil
	}
	if runErr != nil && res.ExitCode == -1 && !res.TimedOut && res.Output == "" {
		return runErr // never started (not found, bad parameters): the error says it all
	}
	fmt.Fprintf(w, "agent:     %s\n", res.Agent)
	fmt.Fprintf(w, "action:    %s\n", res.Action)
	fmt.Fprintf(w, "exit code: %d\n", res.ExitCode)
	if res.Power != fence.PowerUnknown {
		fmt.Fprintf(w, "power:     %s\n", res.Power)
	}
	if res.TimedOut {
		fmt.Fprintf(w, "timed out: yes (the agent and its children were killed)\n")
	}
	fmt.Fprintf(w, "duration:  %d ms\n", res.DurationMs)
	if out := strings.TrimSpace(res.Output); out != "" {
		fmt.Fprintf(w, "output:\n")
		for _, line := range strings.Split(out, "\n") {
			fmt.Fprintf(w, "  | %s\n", line)
		}
		if res.OutputTruncated {
			fmt.Fprintf(w, "  | (output truncated)\n")
		}
	}
	if runErr != nil {
		return runErr
	}
	fmt.Fprintf(w, "result:    ok\n")
	return nil
}

func fenceAgentMetadataCmd() *cobra.Command {
	var (
		agent  string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "agent-metadata --agent NAME",
		Short: "List a fence agent's parameters (from its metadata action)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			md, err := (&fence.AgentRunner{}).Metadata(ctx, agent)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(md)
			}
			fmt.Fprintf(w, "%s: %s\n", md.Name, md.ShortDesc)
			if len(md.Actions) > 0 {
				fmt.Fprintf(w, "actions: %s\n", strings.Join(md.Actions, ", "))
			}
			fmt.Fprintln(w)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PARAMETER\tREQUIRED\tTYPE\tDEFAULT\tDESCRIPTION")
			for _, p := range md.Parameters {
				req := ""
				if p.Required {
					req = "yes"
				}
				desc := p.ShortDesc
				var notes []string
				if p.Secret {
					notes = append(notes, "secret")
				}
				if p.Deprecated {
					notes = append(notes, "deprecated")
				}
				if p.Obsoletes != "" {
					notes = append(notes, "replaces "+p.Obsoletes)
				}
				if len(p.Options) > 0 {
					notes = append(notes, "one of "+strings.Join(p.Options, "|"))
				}
				if len(notes) > 0 {
					desc += " (" + strings.Join(notes, "; ") + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Name, req, p.Type, p.Default, desc)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "fence agent program: a name (fence_ipmilan) or an absolute path")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.MarkFlagRequired("agent")
	return cmd
}
