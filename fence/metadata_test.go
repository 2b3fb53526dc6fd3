package fence

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

const sampleMetadata = `WARNING: something the agent printed first
<?xml version="1.0" ?>
<resource-agent name="fence_example" shortdesc="Fence agent for an example BMC" >
<longdesc>Turns the example BMC's power off.</longdesc>
<vendor-url>http://www.example.com</vendor-url>
<parameters>
	<parameter name="action" unique="0" required="1">
		<getopt mixed="-o, --action=[action]" />
		<content type="string" default="reboot"  />
		<shortdesc lang="en">Fencing action</shortdesc>
	</parameter>
	<parameter name="ip" unique="0" required="1" obsoletes="ipaddr">
		<getopt mixed="-a, --ip=[ip]" />
		<content type="string"  />
		<shortdesc lang="de">IP-Adresse</shortdesc>
		<shortdesc lang="en">IP address or hostname of fencing device</shortdesc>
	</parameter>
	<parameter name="password" unique="0" required="0">
		<getopt mixed="-p, --password=[password]" />
		<content type="string"  />
		<shortdesc lang="en">Login password or passphrase</shortdesc>
	</parameter>
	<parameter name="lanplus" unique="0" required="0" deprecated="1">
		<content type="boolean" default="0" />
	</parameter>
	<parameter name="method" unique="0" required="0">
		<content type="select" default="onoff">
			<option value="onoff" />
			<option value="cycle" />
		</content>
	</parameter>
</parameters>
<actions>
	<action name="on" automatic="0"/>
	<action name="off" />
	<action name="status" />
	<action name="metadata" />
</actions>
</resource-agent>
`

func TestParseMetadata(t *testing.T) {
	md, err := ParseMetadata([]byte(sampleMetadata))
	if err != nil {
		t.Fatal(err)
	}
	if md.Name != "fence_example" || md.ShortDesc == "" || md.LongDesc == "" || md.VendorURL == "" {
		t.Errorf("header: %+v", md)
	}
	if len(md.Parameters) != 5 {
		t.Fatalf("%d parameters", len(md.Parameters))
	}
	ip, _ := md.Parameter("ip")
	if !ip.Required || ip.Obsoletes != "ipaddr" || ip.ShortDesc != "IP address or hostname of fencing device" || ip.Getopt != "-a, --ip=[ip]" {
		t.Errorf("ip: %+v", ip)
	}
	if pw, _ := md.Parameter("password"); !pw.Secret {
		t.Errorf("password not marked secret: %+v", pw)
	}
	if lp, _ := md.Parameter("lanplus"); !lp.Deprecated || lp.Type != "boolean" || lp.Default != "0" {
		t.Errorf("lanplus: %+v", lp)
	}
	if m, _ := md.Parameter("method"); strings.Join(m.Options, ",") != "onoff,cycle" || m.Type != "select" {
		t.Errorf("method: %+v", m)
	}
	if strings.Join(md.Actions, ",") != "on,off,status,metadata" {
		t.Errorf("actions %v", md.Actions)
	}
}

func TestParseMetadataRefuses(t *testing.T) {
	for name, in := range map[string]string{
		"empty":       "",
		"not xml":     "Usage: fence_x [options]",
		"wrong root":  `<html><body/></html>`,
		"no name":     `<resource-agent><parameters/></resource-agent>`,
		"bad param":   `<resource-agent name="x"><parameters><parameter name="a b"/></parameters></resource-agent>`,
		"empty param": `<resource-agent name="x"><parameters><parameter/></parameters></resource-agent>`,
		"unclosed":    `<resource-agent name="x"><parameters>`,
		"deep":        `<resource-agent name="x">` + strings.Repeat("<a>", 100) + strings.Repeat("</a>", 100) + `</resource-agent>`,
		"too big":     `<resource-agent name="x">` + strings.Repeat(" ", maxMetadataBytes) + `</resource-agent>`,
	} {
		if _, err := ParseMetadata([]byte(in)); err == nil {
			t.Errorf("%s: parsed; want an error", name)
		}
	}
}

// FuzzParseMetadata: any input gives a result or an error, never a panic,
// and a result keeps the limits and marshals to JSON.
func FuzzParseMetadata(f *testing.F) {
	f.Add([]byte(sampleMetadata))
	f.Add([]byte(`<resource-agent name="x"><parameters><parameter name="p"><content type="select"><option value="a"/></content></parameter></parameters><actions><action name="off"/></actions></resource-agent>`))
	f.Add([]byte(`<?xml version="1.0"?><resource-agent name="&amp;&#x41;"/>`))
	f.Add([]byte(`<resource-agent name="x"><parameters><parameter name="p"/><parameter name="p"/></parameters></resource-agent>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		md, err := ParseMetadata(data)
		if err != nil {
			return
		}
		if md.Name == "" || len(md.Parameters) > maxMetadataParams || len(md.Actions) > maxMetadataActions {
			t.Fatalf("limits broken: %d params, %d actions, name %q", len(md.Parameters), len(md.Actions), md.Name)
		}
		seen := map[string]bool{}
		for _, p := range md.Parameters {
			if !paramNameRe.MatchString(p.Name) || seen[p.Name] {
				t.Fatalf("bad or repeated parameter name %q", p.Name)
			}
			seen[p.Name] = true
			if len(p.ShortDesc) > maxMetadataTextBytes+len(metadataTruncatedText) || len(p.Options) > maxMetadataOptions {
				t.Fatalf("parameter %s over limits", p.Name)
			}
			if !utf8.ValidString(p.Default) && utf8.Valid(data) {
				t.Fatalf("clip broke UTF-8 in %q", p.Default)
			}
		}
		if _, err := json.Marshal(md); err != nil {
			t.Fatal(err)
		}
	})
}
